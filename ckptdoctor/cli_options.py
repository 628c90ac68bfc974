"""What the commands' arguments mean: the choice enums, the options several commands share
(`AllowOpt`, `StorageOpt`, `TimeoutOpt`, ...), and the checks that turn raw arguments into
values the library takes (a PATH or URL resolved and required to exist, --allow names vetted,
--select/--ignore prefixes and --framework-version specs parsed). Each raises a
CkptdoctorError (one line, a code) that `cli_errors.ERRORS` reports."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .codes import Code
from .errors import PathError, RefusedError, UsageError

if TYPE_CHECKING:
    from .storage import AnyPath


class OutputFormat(str, enum.Enum):
    """--format of `validate`."""

    text = "text"
    json = "json"
    junit = "junit"
    sarif = "sarif"
    github = "github"


class ConsumerChoice(str, enum.Enum):
    """--consumer: who judges whether a file loads."""

    framework = "framework"
    torch = "torch"


class FailOn(str, enum.Enum):
    """--fail-on: the lowest severity that fails."""

    error = "error"
    warning = "warning"
    info = "info"


class ConvertDtype(str, enum.Enum):
    """--dtype of `convert`: floating-point tensors are cast to it."""

    keep = "keep"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class DiffFormat(str, enum.Enum):
    """--format of `diff`."""

    text = "text"
    json = "json"


AllowOpt = Annotated[list[str], typer.Option(
    "--allow", metavar="GLOBAL",
    help="Dotted global of unknown safety you vouch for (e.g. mylib.Config). Repeatable. "
         "Reviewed data names need no --allow; code-executing names are refused even when "
         "named.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", help="Allow the last loader strategy: torch.load(weights_only=False) with "
                    "Python's unpickler restricted to vetted names (torch defaults, reviewed "
                    "data, --allow names). Admits no unknown name by itself; never for a file "
                    "whose scan is not complete or finds a code-executing global.")]
ConsumerOpt = Annotated[ConsumerChoice, typer.Option(
    "--consumer", help="Judge files by how the layout's own framework resumes (default) or by "
                       "plain torch.load(weights_only=True).")]

FrameworkVersionOpt = Annotated[list[str], typer.Option(
    "--framework-version", metavar="NAME=VERSION",
    help="Judge as if NAME (torch, transformers, accelerate, deepspeed, lightning, peft) were "
         "at VERSION, e.g. deepspeed=0.15.4. Repeatable. Default: the installed versions.")]


StorageOpt = Annotated[list[str], typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec storage option for a URL PATH (s3://, gs://, hf://, http(s)://), e.g. "
         "anon=true or client_kwargs.region_name=eu-west-1. Repeatable. Credentials "
         "otherwise come from the standard chains (AWS env/profiles, Google ADC, HF_TOKEN).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0.1, help="Seconds a remote request may take before it is a CK013 "
                               "finding.")]
MaxBytesOpt = Annotated[str | None, typer.Option(
    "--max-bytes", metavar="SIZE", help="Budget of bytes read from remote storage (e.g. 2GB); "
                                        "a file that would pass it is a CK016 finding.")]


def resolve_path(raw: str, options: list[str] | None = None, timeout: float | None = None,
            max_bytes: str | None = None) -> AnyPath:
    """PATH as given: a local Path (unchanged code path) or a storage.RemotePath for a URL.
    A URL problem (unknown scheme, missing extra, bad option) is one line with its code."""
    from .storage import StorageError, as_path, is_url, parse_options, redact

    if not is_url(raw):
        if options or max_bytes:
            raise UsageError.of(Code.STORAGE_OPTION, raw, "--storage-option / --max-bytes apply "
                                                          "to URLs only") from None
        return Path(raw)
    budget = None
    if max_bytes:
        from .estimate import parse_bytes

        try:
            budget = parse_bytes(max_bytes)
        except ValueError as exc:
            raise UsageError.of(Code.STORAGE_OPTION, redact(raw), f"--max-bytes: {exc}") from None
    try:
        return as_path(raw, parse_options(options or []), timeout=timeout, max_bytes=budget)
    except StorageError as exc:
        raise UsageError.of(exc.code, redact(raw), str(exc)) from None


def require_path(path: AnyPath) -> None:
    """PATH exists (a remote object or prefix: one metadata request); else PathError."""
    from .storage import RemoteReadError, is_remote

    if is_remote(path):
        try:
            found = path.session.info(path.path)
        except (RemoteReadError, FileNotFoundError) as exc:
            code = getattr(exc, "code", Code.REMOTE_FAILED)
            raise PathError.of(code, str(path),
                               getattr(exc, "strerror", None) or str(exc)) from None
        if found is None:
            raise PathError.of(Code.PATH_MISSING, str(path), "no such object or prefix") from None
        return
    if not os.path.lexists(path):
        raise PathError.of(Code.PATH_MISSING, path, "no such file or directory")
    if os.path.islink(path) and not path.exists():
        raise PathError.of(Code.SYMLINK_LOOP, path, "dangling symlink or symlink loop")


def framework_versions(specs: list[str]) -> dict[str, str]:
    """--framework-version NAME=VERSION specs -> {name: version}; UsageError when malformed."""
    from .layouts.versions import parse_override

    out = {}
    for spec in specs:
        try:
            name, version = parse_override(spec)
        except ValueError as exc:
            raise UsageError.of(Code.FRAMEWORK_VERSION, spec, str(exc)) from None
        out[name] = version
    return out


def check_allow(names: list[str]) -> None:
    """--allow names are dotted identifiers and never a code-executing global."""
    from .pickles.policy import Verdict, vet

    for name in names:
        if "." not in name or any(not part.isidentifier() for part in name.split(".")):
            raise UsageError.of(Code.UNKNOWN_GLOBAL, name, "--allow takes a dotted name such "
                                "as numpy.core.multiarray._reconstruct")
        if vet(name, names).verdict is Verdict.DANGEROUS:
            raise RefusedError.of(Code.DANGEROUS_GLOBAL, name,
                                  "can execute code; ckptdoctor never allow-lists it")


def check_prefixes(prefixes: list[str]) -> None:
    """--select / --ignore prefixes each match some finding code."""
    from .codes import lookup

    for p in prefixes:
        if not lookup(p):
            raise UsageError.of(Code.BAD_PREFIX, p,
                                "matches no finding code (see `ckptdoctor codes`)")
