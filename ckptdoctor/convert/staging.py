"""Output staging: where a conversion writes before anything is visible at DST, and the
JSON files it writes there."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..atomic import commit, fsync_dir, tmp_path_for
from .common import fail

# Set by convert() around one conversion: called with the Staging just before `commit` makes
# the output visible (the resume-equivalence diff); raising keeps DST as it was.
BEFORE_COMMIT: ContextVar[Callable[[Staging], None] | None] = ContextVar(
    "ckptdoctor_convert_before_commit", default=None)


class Staging:
    """Where a conversion writes before anything is visible at DST.

    kind "dir": a temp directory beside DST (same marker as atomic.py temp files); `commit`
    fsyncs it and renames it to DST. kind "file": `path(name)` gives temp files beside their
    targets; `commit` renames each (atomic.commit: fsync, rename, fsync dir), the main file
    first. `abort` removes everything staged."""

    def __init__(self, dst: Path, kind: str, overwrite: bool = False):
        self.dst = Path(dst)
        self.kind = kind
        self.overwrite = overwrite
        self.files: dict[Path, Path] = {}  # final target -> temp path (file mode)
        self.dir: Path | None = None
        if self.dst.exists() or self.dst.is_symlink():
            if not overwrite and not (kind == "dir" and self.dst.is_dir()
                                      and not any(self.dst.iterdir())):
                raise fail(self.dst, f"{self.dst} already exists",
                           hint="choose a new destination or remove it first")
            if kind == "dir" and not self.dst.is_dir():
                raise fail(self.dst, f"{self.dst} exists and is not a directory")
            if kind == "file" and self.dst.is_dir():
                raise fail(self.dst, f"{self.dst} is a directory; give a file name")
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            self.dir = tmp_path_for(self.dst)
            self.dir.mkdir()

    def path(self, name: str) -> Path:
        """Where to write the output file `name` (a file name inside DST, or, in file mode,
        the DST file itself for name == DST.name and sidecars beside it)."""
        if self.dir is not None:
            return self.dir / name
        target = self.dst.parent / name
        if target not in self.files:
            if target != self.dst and target.exists() and not self.overwrite:
                raise fail(target, f"{target} already exists",
                           hint="choose a new destination or remove it first")
            self.files[target] = tmp_path_for(target)
        return self.files[target]

    def final(self, name: str) -> Path:
        return (self.dst / name) if self.dir is not None else (self.dst.parent / name)

    def commit(self) -> list[str]:
        hook = BEFORE_COMMIT.get()
        if hook is not None:
            hook(self)
        if self.dir is not None:
            names = sorted(p.name for p in self.dir.iterdir())
            for p in self.dir.iterdir():
                if p.is_file():
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(self.dir)
            old = None
            if self.dst.exists():
                old = tmp_path_for(self.dst)
                os.replace(self.dst, old)
            os.replace(self.dir, self.dst)
            fsync_dir(self.dst.parent)
            self.dir = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return [str(self.dst / n) for n in names]
        done = []
        order = sorted(self.files.items(), key=lambda kv: kv[0] != self.dst)  # main file first
        for target, tmp in order:
            if tmp.exists():
                commit(tmp, target)
                done.append(str(target))
        self.files.clear()
        return done

    def abort(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        for tmp in self.files.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.files.clear()


def write_json(path: Path, doc: Any) -> None:
    import json

    data = (json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


