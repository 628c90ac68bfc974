"""ckptdoctor: inspect, validate, repair and convert PyTorch / LLM training checkpoints.

Importing the package is cheap: torch is only imported by the functions that load tensors.
The functions below are the public API; each lives in the module named after its command
(`ckptdoctor.inspect`, `ckptdoctor.validate`, `ckptdoctor.repair`, `ckptdoctor.convert`)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "inspect_path", "validate_path", "safe_load", "allow_for", "LoadError",
           "repair_path", "convert_checkpoint", "CkptdoctorError"]


def inspect_path(path):
    """Describe a checkpoint file or directory from metadata only (a `Report`)."""
    from .inspect import inspect_path as run

    return run(path)


def validate_path(path, **options):
    """(report, findings) for PATH; `ckptdoctor.validate.exit_code(findings)` is the verdict.
    Options are the fields of `ckptdoctor.validate.ValidateOptions`."""
    from .validate import ValidateOptions, validate

    return validate(path, ValidateOptions(**options))


def safe_load(f, map_location="cpu", pickle_module=None, *, weights_only=None, mmap=None,
              allow=(), trust=False, **pickle_load_args):
    """Drop-in for torch.load(f, map_location, weights_only=..., mmap=..., **pickle_load_args)
    (f: a path or a binary file object): weights_only, then allow-listed data types, then, only
    with trust=True, Python's unpickler restricted to names that pass ckptdoctor's allow-list
    rule (torch defaults, reviewed data, `allow`). Raises LoadError, a pickle.UnpicklingError."""
    from .loaders import safe_load as run

    return run(f, map_location, pickle_module, weights_only=weights_only, mmap=mmap,
               allow=allow, trust=trust, **pickle_load_args)


def allow_for(path, allow=()):
    """Context manager: torch.load(weights_only=True) calls inside it also accept PATH's
    computed, vetted, data-only allow-list (see ckptdoctor.loaders.allow_for)."""
    from .loaders import allow_for as run

    return run(path, allow)


def __getattr__(name):
    if name == "LoadError":  # lazily, so importing ckptdoctor stays cheap
        from .loaders import LoadError

        return LoadError
    if name == "CkptdoctorError":  # the base of every error ckptdoctor raises on purpose
        from .errors import CkptdoctorError

        return CkptdoctorError
    raise AttributeError(f"module 'ckptdoctor' has no attribute {name!r}")


def repair_path(path, **options):
    """Rewrite failing files so plain torch.load(weights_only=True) loads them (see repair/)."""
    from .repair import repair

    return repair(path, **options)


def convert_checkpoint(src, dst, to, **options):
    """Convert between checkpoint formats in bounded memory (see convert/)."""
    from .convert import convert

    return convert(src, dst, to, **options)
