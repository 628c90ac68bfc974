"""ckptdoctor: inspect, validate, repair and convert PyTorch / LLM training checkpoints.

Importing the package is cheap: torch is only imported by the functions that load tensors.
The functions below are the public API; each lives in the module named after its command
(`ckptdoctor.inspect`, `ckptdoctor.validate`, `ckptdoctor.repair`, `ckptdoctor.convert`)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "inspect_path", "validate_path", "safe_load", "repair_path",
           "convert_checkpoint"]


def inspect_path(path):
    """Describe a checkpoint file or directory from metadata only (a `Report`)."""
    from .inspect import inspect_path as run

    return run(path)


def validate_path(path, **options):
    """(report, findings) for PATH; `ckptdoctor.validate.exit_code(findings)` is the verdict.
    Options are the fields of `ckptdoctor.validate.ValidateOptions`."""
    from .validate import ValidateOptions, validate

    return validate(path, ValidateOptions(**options))


def safe_load(path, allow=(), trust=False, **kwargs):
    """Drop-in for torch.load: weights_only, then allow-listed data types, then (only with
    trust=True and never for a file holding a code-executing global) a trusted load."""
    from .loaders import safe_load as run

    return run(path, allow=allow, trust=trust, **kwargs)


def repair_path(path, **options):
    """Rewrite failing files so plain torch.load(weights_only=True) loads them (see repair/)."""
    from .repair import repair

    return repair(path, **options)


def convert_checkpoint(src, dst, to, **options):
    """Convert between checkpoint formats in bounded memory (see convert/)."""
    from .convert import convert

    return convert(src, dst, to, **options)
