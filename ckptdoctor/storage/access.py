"""What the readers call on a PATH that may be local or remote: the builtin file functions for
a local `Path` (unchanged speed, no fsspec), the ranged equivalents for a `RemotePath`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..codes import Code
from .fileobj import RemoteStream
from .remote_path import RemotePath, RemoteStat

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13


def is_remote(path: Any) -> TypeIs[RemotePath]:
    return isinstance(path, RemotePath)


def open_binary(path: Path | RemotePath | str):
    """Open for reading: the builtin `open` for local files (unchanged speed), a RangedFile
    for remote ones."""
    if isinstance(path, RemotePath):
        return path.open()
    return open(path, "rb")


def stat(path: Path | RemotePath | str) -> os.stat_result | RemoteStat:
    return path.stat() if isinstance(path, RemotePath) else os.stat(path)


def zip_source(path: Path | RemotePath | str):
    """What zipfile.ZipFile / tarfile take: the path itself locally, a RangedFile remotely."""
    return path.open() if isinstance(path, RemotePath) else path


def prefetch(fh: Any, ranges: Iterable[tuple[int, int]]) -> None:
    """Announce ranges about to be read one by one; a no-op for local files."""
    fn = getattr(fh, "prefetch", None)
    if fn is not None:
        fn(ranges)


def io_stats(path: Any) -> dict[str, int] | None:
    """{"bytes_read", "requests"} of a remote run (None for a local path)."""
    if isinstance(path, RemotePath):
        s = path.session
        return {"bytes_read": s.bytes_read, "requests": s.requests}
    return None


def open_stream(path: Path | RemotePath | str):
    """For one front-to-back pass (stream.py): unbuffered `open` locally, RemoteStream
    remotely."""
    if isinstance(path, RemotePath):
        return RemoteStream(path)
    return open(path, "rb", buffering=0)


def failure_of(path: Any) -> tuple[Code, str] | None:
    """The (code, message) a remote file's reads failed with, if any."""
    if isinstance(path, RemotePath):
        return path.session.failures.get(path.path)
    return None
