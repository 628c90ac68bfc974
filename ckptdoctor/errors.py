"""One exception hierarchy: every failure ckptdoctor raises on purpose is a `CkptdoctorError`.

Each carries `.finding` (a stable code from codes.py, the path, a one-line message),
`.findings` (that finding plus what led to it, e.g. the CK101 behind a CK705) and the CLI
`.exit_code` of its class. The CLI maps exception types to an exit code and one line in one
table (`cli.ERRORS`); docs/security.md's error table is generated from it.

Classes that code written for other libraries already catches keep that base too:
`LoadError` is a `pickle.UnpicklingError` (as torch.load raises), `CheckpointRejected` a
`RuntimeError`, `AllowListError` a `ValueError`, `BackupRefused` an `OSError`.

Importing this module is cheap (codes and model only): static paths import it too."""

from __future__ import annotations

import enum
import pickle
from collections.abc import Iterable
from typing import Any, ClassVar

from .codes import Code
from .model import Finding, Severity


class ExitCode(enum.IntEnum):
    """What the CLI exits with."""

    OK = 0  # no finding at or above --fail-on
    FINDINGS = 1  # the checkpoint has findings; ckptdoctor refused an unsafe request
    USAGE = 2  # usage error, unusable PATH argument, a side unreadable, internal error
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CkptdoctorError(Exception):
    """Base class of every error ckptdoctor raises on purpose. Construct with a Finding
    (`Code.X.finding(path, message)`), or with a message when the class names its code
    (`code`); `extra` are the findings behind it."""

    code: ClassVar[Code | None] = None  # the code of a message-only construction
    exit_code: ClassVar[ExitCode] = ExitCode.USAGE

    def __init__(self, finding: Finding | str, extra: Iterable[Finding] = (), *,
                 path: str = "", hint: str = "") -> None:
        if not isinstance(finding, Finding):
            if self.code is None:
                raise TypeError(f"{type(self).__name__} needs a Finding (it names no code)")
            finding = self.code.finding(str(path), str(finding), hint)
        super().__init__(finding.message)
        self.finding = finding
        self.findings = [finding, *extra]

    @classmethod
    def of(cls, code: Code, path: Any, message: str, hint: str = "",
           **detail: Any) -> CkptdoctorError:
        return cls(code.finding(str(path), message, hint, **detail))

    def cause(self) -> Finding:
        """The finding a user needs first: the underlying error (e.g. CK101) when there is one,
        else this error's own finding."""
        return next((f for f in self.findings[1:] if f.severity is Severity.ERROR), self.finding)

    def line(self) -> str:
        """`CODE PATH: message` on one line."""
        f = self.cause()
        where = f" {f.path}" if f.path else ""
        return f"{f.code}{where}: {f.message}".replace("\n", " ")


# --- the command line ---------------------------------------------------------------------------
class UsageError(CkptdoctorError):
    """A bad option value or combination (`--framework-version`, `--select`, `--to`, ...)."""


class PathError(CkptdoctorError):
    """A PATH argument that cannot be used: missing (CK001), dangling symlink or loop (CK005)."""


class RefusedError(CkptdoctorError):
    """A request ckptdoctor refuses for safety (`--allow` of a code-executing global)."""

    code = Code.DANGEROUS_GLOBAL
    exit_code = ExitCode.FINDINGS


# --- commands -----------------------------------------------------------------------------------
class RepairError(CkptdoctorError):
    """repair (or its undo) refused as a whole; nothing was changed."""

    code = Code.REPAIR_REFUSED
    exit_code = ExitCode.FINDINGS


class BackupRefused(RepairError, OSError):
    """A backup location or manifest ckptdoctor will not use (symlinked, or a path that
    leaves the tree). Nothing was written or removed."""


class ConvertError(CkptdoctorError):
    """A conversion (or reshard) that did not produce output. `.finding` is the CK7xx reason;
    `.findings` adds what led to it (e.g. a CK101 dangerous global in a DCP BytesIO item)."""

    code = Code.CONVERT_FAILED
    exit_code = ExitCode.FINDINGS


class DiffError(CkptdoctorError):
    """A side of a diff could not be read. `.finding` is CK901 with the cause."""

    code = Code.DIFF_UNREADABLE


# --- loading ------------------------------------------------------------------------------------
class LoadError(CkptdoctorError, pickle.UnpicklingError):
    """Every strategy failed or was refused. A pickle.UnpicklingError, as torch.load raises
    for a file it will not load, so code written for torch.load catches it."""

    code = Code.LOAD_FAILS
    exit_code = ExitCode.FINDINGS

    def __init__(self, path: str, attempts: list[Any], findings: list[Finding]):
        self.path = path
        self.attempts = attempts
        reason = findings[0].message if findings else "no strategy loaded it"
        first = findings[0] if findings else Code.LOAD_FAILS.finding(path, reason)
        super().__init__(first, findings[1:])
        self.args = (f"cannot load {path}: {reason}",)
        self.findings = list(findings)  # as before: exactly the findings given


class AllowListError(CkptdoctorError, ValueError):
    """Names that must not be resolved; `.names` lists them all, not just the first."""

    code = Code.UNKNOWN_GLOBAL
    exit_code = ExitCode.FINDINGS

    def __init__(self, message: str, names: list[str]):
        super().__init__(message, path=", ".join(names))
        self.names = names


class DangerousGlobalError(AllowListError):
    """A name in the dangerous class: refused even when the user names it."""

    code = Code.DANGEROUS_GLOBAL


class NotVouchedError(AllowListError):
    """Names of unknown safety nobody vouched for; the message gives the exact --allow flags."""


class CheckpointRejected(CkptdoctorError, RuntimeError):
    """The pre-resume gate refused the checkpoint. `.findings` are the error findings."""

    code = Code.GATE_FAILED
    exit_code = ExitCode.FINDINGS

    def __init__(self, path: str, findings: list[Finding]):
        self.path = path
        first = findings[0]
        text = f"ckptdoctor: refusing to resume from {path}: {first.code} {first.path or '.'}: " \
               f"{first.message}"
        if first.hint:
            text += f" (hint: {first.hint})"
        if len(findings) > 1:
            text += f" [+{len(findings) - 1} more; run: ckptdoctor validate {path}]"
        super().__init__(Code.GATE_FAILED.finding(path, text), findings)
        self.args = (text,)
        self.findings = list(findings)  # the gate's error findings, as before


def hierarchy() -> list[type[CkptdoctorError]]:
    """CkptdoctorError and every subclass, depth first in definition order."""
    out: list[type[CkptdoctorError]] = []

    def walk(cls: type[CkptdoctorError]) -> None:
        out.append(cls)
        for sub in cls.__subclasses__():
            if sub.__module__ == __name__:
                walk(sub)

    walk(CkptdoctorError)
    return out


__all__ = ["ExitCode", "CkptdoctorError", "UsageError", "PathError", "RefusedError",
           "RepairError", "BackupRefused", "ConvertError", "DiffError", "LoadError",
           "AllowListError", "DangerousGlobalError", "NotVouchedError", "CheckpointRejected",
           "hierarchy"]
