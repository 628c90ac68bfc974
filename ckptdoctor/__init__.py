"""ckptdoctor: inspect, validate, repair and convert PyTorch / LLM training checkpoints.

Importing the package is cheap: torch is only imported by the functions that load tensors."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "inspect", "validate", "safe_load", "repair", "convert"]


def inspect(path):
    """Describe a checkpoint file or directory from metadata only (a `Report`)."""
    from .inspect import inspect_path

    return inspect_path(path)


def validate(path, **options):
    """(report, findings) for PATH; `ckptdoctor.validate.exit_code(findings)` is the verdict."""
    from .validate import ValidateOptions, validate as _validate

    return _validate(path, ValidateOptions(**options))


def safe_load(path, allow=(), trust=False, **kwargs):
    """Drop-in for torch.load: weights_only, then allow-listed data types, then (only with
    trust=True and never for a file holding a code-executing global) a trusted load."""
    from .loaders import safe_load as _safe_load

    return _safe_load(path, allow=allow, trust=trust, **kwargs)


def repair(path, **options):
    from .repair import repair as _repair

    return _repair(path, **options)


def convert(src, dst, to, **options):
    from .convert import convert as _convert

    return _convert(src, dst, to, **options)
