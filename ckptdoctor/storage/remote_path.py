"""`RemotePath`: a file or directory on a remote filesystem with the small part of the pathlib
API the readers use (`/`, `name`, `suffix`, `parent`, `stat`, `is_file`, `is_dir`, `exists`,
`read_bytes`, `read_text`, `open`), and `AnyPath`, a PATH as the readers take it."""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .fileobj import RangedFile

if TYPE_CHECKING:
    from .session import Session


@dataclass
class RemoteStat:
    """The part of os.stat_result the readers use."""

    st_size: int
    st_mode: int
    etag: str | None = None


class RemotePath:
    """A file or directory on a remote filesystem, with the pathlib subset the readers use.
    Never `os.fspath`-able: a remote path can never be opened as a local file by mistake."""

    __slots__ = ("session", "path")

    def __init__(self, session: Session, path: str):
        self.session = session
        self.path = path.rstrip("/") or path

    # -- pure path --
    def __truediv__(self, rel: str | os.PathLike) -> RemotePath:
        rel = str(rel).replace("\\", "/")
        if not rel or rel == ".":
            return self
        head, sep, tail = self.path.partition("://")
        base = tail if sep else self.path
        joined = posixpath.normpath(posixpath.join(base, rel))
        return RemotePath(self.session, f"{head}://{joined}" if sep else joined)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> RemotePath:
        head, sep, tail = self.path.partition("://")
        base = tail if sep else self.path
        up = posixpath.dirname(base) or base
        return RemotePath(self.session, f"{head}://{up}" if sep else up)

    def relative_to(self, other: RemotePath) -> Path:
        if self.path == other.path:
            return Path(".")
        if not self.path.startswith(other.path + "/"):
            raise ValueError(f"{self} is not below {other}")
        return Path(self.path[len(other.path) + 1:])

    def is_relative_to(self, other: Any) -> bool:
        return isinstance(other, RemotePath) and (
            self.path == other.path or self.path.startswith(other.path + "/"))

    def as_posix(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return self.session.url(self.path)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- queries --
    def stat(self) -> RemoteStat:
        info = self.session.info(self.path)
        if info is None:
            raise FileNotFoundError(2, "no such object", str(self))
        mode = stat_mod.S_IFDIR if info["type"] == "directory" else stat_mod.S_IFREG
        return RemoteStat(info["size"], mode | 0o444, info.get("etag"))

    def exists(self) -> bool:
        try:
            return self.session.info(self.path) is not None
        except (OSError, ValueError):
            return False

    def is_file(self) -> bool:
        try:
            info = self.session.info(self.path)
        except (OSError, ValueError):
            return False
        return info is not None and info["type"] == "file"

    def is_dir(self) -> bool:
        try:
            info = self.session.info(self.path)
        except (OSError, ValueError):
            return False
        return info is not None and info["type"] == "directory"

    def is_symlink(self) -> bool:
        return False  # object stores have no links

    def open(self, mode: str = "rb") -> RangedFile:
        if mode != "rb":
            raise PermissionError(13, "remote paths are read-only here", str(self))
        return RangedFile(self)

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


# a PATH as the readers take it (`as_path`): a local file or directory, or a remote one
AnyPath: TypeAlias = "Path | RemotePath"
