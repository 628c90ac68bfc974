"""How a command fails: one table (`ERRORS`) maps each exception type to an exit code and
the one line printed on stderr, never a traceback (CKPTDOCTOR_DEBUG=1 re-raises unexpected
ones). docs/security.md's error table is generated from it (`error_table`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .cli_output import err
from .codes import Code
from .errors import CkptdoctorError, ExitCode


def _os_error(exc: BaseException) -> str:
    assert isinstance(exc, OSError)
    where = f"{exc.filename} " if exc.filename else ""
    code = Code.WRITE_FAILED if _is_write(exc) else Code.UNREADABLE
    # disk full, read-only directory, permission, an unreadable file: the writes are atomic
    return (f"error: {code.code} {where}{exc.strerror or exc}; nothing was replaced, "
            "originals untouched")


def _is_write(exc: OSError) -> bool:
    """Did a write fail? ckptdoctor never writes a file in place: it creates temp files and
    backups. So an error on an existing regular file that is neither is a read."""
    import errno

    from .atomic import TMP_MARKER
    from .repair.backup import BACKUP_DIRNAME

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return True
    name = os.fsdecode(exc.filename) if exc.filename is not None else ""
    if not name or TMP_MARKER in name or BACKUP_DIRNAME in Path(name).parts:
        return True
    return not os.path.isfile(name)


def _internal(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]


# (type, exit code (None: the exception's own), its line, CKPTDOCTOR_DEBUG=1 re-raises it).
# The first row whose type matches wins; docs/security.md's error table is generated from it.
ERRORS: tuple[tuple[type[BaseException], ExitCode | None, Callable[[BaseException], str], bool],
              ...] = (
    (CkptdoctorError, None, lambda e: f"error: {e.line()}", False),  # type: ignore[attr-defined]
    (OSError, ExitCode.USAGE, _os_error, True),
    (KeyboardInterrupt, ExitCode.INTERRUPTED, lambda e: "interrupted", False),
    (Exception, ExitCode.USAGE, _internal, True),  # the last line of defence: never a traceback
)


def report_error(exc: BaseException) -> int:
    """Print EXC's one line on stderr; its exit code. Re-raises what `ERRORS` does not cover."""
    for etype, code, line, debug in ERRORS:
        if isinstance(exc, etype):
            if debug and os.environ.get("CKPTDOCTOR_DEBUG"):
                raise exc
            err.print(f"ckptdoctor: {line(exc)}", markup=False)
            return int(code if code is not None else exc.exit_code)  # type: ignore[attr-defined]
    raise exc


def error_table() -> str:
    """The markdown table of docs/security.md: exception -> code -> exit code."""
    from .errors import hierarchy

    rows = ["| exception | code | exit | meaning |", "| --- | --- | --- | --- |"]
    for cls in hierarchy():
        code = f"`{cls.code.code}`" if cls.code is not None else "per error"
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        rows.append(f"| `{cls.__name__}` | {code} | {int(cls.exit_code)} | {doc} |")
    usage = int(ExitCode.USAGE)
    rows.append(f"| `OSError` | `{Code.WRITE_FAILED.code}` | {usage} | a write failed (disk full, "
                "read-only directory); nothing was replaced |")
    rows.append(f"| `OSError` | `{Code.UNREADABLE.code}` | {usage} | an existing file (not one "
                "ckptdoctor writes) could not be read |")
    rows.append(f"| `KeyboardInterrupt` | | {int(ExitCode.INTERRUPTED)} | interrupted |")
    rows.append(f"| any other exception | | {int(ExitCode.USAGE)} | internal error: its type "
                "and message on one line |")
    return "\n".join(rows)
