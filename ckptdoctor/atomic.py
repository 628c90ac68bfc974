"""Crash-safe file replacement: write a temp file in the same directory, fsync it, rename it
over the target, fsync the directory. A reader (or a crash) sees the old file or the new one,
never half of either. Temp names carry a fixed marker so a later run can find leftovers."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARKER = ".ckptdoctor-tmp-"


def tmp_path_for(target: Path) -> Path:
    return target.parent / f"{TMP_MARKER}{os.getpid()}-{time.monotonic_ns()}-{target.name}"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file object; on clean exit the data replaces `target` atomically.

    On any exception the temp file is removed and the target is untouched."""
    target = Path(target)
    tmp = tmp_path_for(target)
    fh = open(tmp, "xb")  # noqa: SIM115 - yielded open; closed on both paths below
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            fh.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_writer(target) as fh:
        fh.write(data)


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temp path beside `target` for writers that need a path (torch.save, safetensors).

    The caller writes and verifies it; `commit(tmp, target)` renames it into place. Anything
    left on exception is removed."""
    tmp = tmp_path_for(Path(target))
    try:
        yield tmp
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def commit(tmp: Path, target: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def leftovers(root: Path) -> list[Path]:
    """Temp files an interrupted ckptdoctor write left behind under root."""
    if root.is_file():
        root = root.parent
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # staging directories (convert builds directory outputs in one) count as one leftover
        out.extend(Path(dirpath) / d for d in dirnames if d.startswith(TMP_MARKER))
        dirnames[:] = [d for d in dirnames
                       if d != ".ckptdoctor-backup" and not d.startswith(TMP_MARKER)]
        out.extend(Path(dirpath) / f for f in filenames if f.startswith(TMP_MARKER))
    return sorted(out)
