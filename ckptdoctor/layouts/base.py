"""What every layout module shares: a cached view of a directory, and the Layout protocol.

A layout knows one framework's checkpoint: how to recognise it, what it records about itself
(step, epoch, world size, ...), which files its resume needs, and how its resume loads each file
(the *consumer*), so validate can judge a checkpoint by what that framework really does."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..formats import detect_file
from ..model import FileInfo, Finding, LayoutInfo

MAX_FILES = 200_000
SKIP_DIRS = frozenset({".ckptdoctor-backup", "__pycache__", ".git"})


@dataclass(frozen=True)
class Consumer:
    """How a framework's resume loads one file.

    mode: "weights_only"  torch.load(weights_only=True) with `allow` added by the framework
          "unsafe"        torch.load(weights_only=False) (only a dangerous global stops it)
          "safetensors"   no pickle involved
          "unused"        resume never reads it (e.g. HF training_args.bin)"""

    mode: str
    allow: frozenset[str] = frozenset()
    who: str = ""  # "transformers Trainer._load_rng_state", for messages


WEIGHTS_ONLY = Consumer("weights_only", who="torch.load(weights_only=True)")
UNSAFE = Consumer("unsafe")
UNUSED = Consumer("unused")


class DirView:
    """A directory, walked once, with per-file metadata read on demand and cached."""

    def __init__(self, root: Path, rel: str = "", max_files: int = MAX_FILES):
        self.root = root
        self.rel = rel  # this directory relative to the inspected PATH
        self._infos: dict[str, FileInfo] = {}
        self.truncated = False
        self.files: list[str] = []  # relative to root, '/'-separated, sorted
        self.dirs: list[str] = []
        self.broken_links: list[str] = []
        if root.is_dir():
            self._walk(max_files)

    def _walk(self, max_files: int) -> None:
        seen: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen:  # symlink loop
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            base = Path(dirpath).relative_to(self.root).as_posix()
            pre = "" if base == "." else base + "/"
            for d in dirnames:
                self.dirs.append(pre + d)
            for f in sorted(filenames):
                full = Path(dirpath) / f
                if full.is_symlink() and not full.exists():
                    self.broken_links.append(pre + f)
                self.files.append(pre + f)
                if len(self.files) >= max_files:
                    self.truncated = True
                    return
        self.files.sort()
        self.dirs.sort()

    # -- queries --
    def has(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def top(self) -> list[str]:
        """Names directly in this directory (files and dirs)."""
        return sorted({p.split("/", 1)[0] for p in self.files} | {d.split("/", 1)[0] for d in self.dirs})

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        return [f for f in self.files if fnmatch.fnmatchcase(f, pattern)]

    def info(self, rel: str) -> FileInfo:
        if rel not in self._infos:
            self._infos[rel] = detect_file(self.root / rel, self.outer(rel))
        return self._infos[rel]

    def outer(self, rel: str) -> str:
        """Path relative to the inspected PATH."""
        return f"{self.rel}/{rel}" if self.rel and rel else (self.rel or rel)

    def read_json(self, rel: str) -> Any:
        """Parsed JSON or None (missing, too big or invalid: the format check reports why)."""
        p = self.root / rel
        try:
            if p.stat().st_size > 64 << 20:
                return None
            return json.loads(p.read_text("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return None

    def read_text(self, rel: str, limit: int = 4096) -> str | None:
        try:
            with open(self.root / rel, "rb") as fh:
                return fh.read(limit).decode("utf-8", "replace").strip()
        except OSError:
            return None

    def sub(self, rel: str) -> "DirView":
        return DirView(self.root / rel, self.outer(rel))


class Layout(Protocol):
    name: str

    def match(self, d: DirView) -> bool:
        """Cheap recognition from names (and at most a small JSON/text read)."""

    def describe(self, d: DirView) -> LayoutInfo:
        """Step, epoch, world size, versions... whatever the framework recorded."""

    def check(self, d: DirView) -> list[Finding]:
        """Completeness: what this framework's resume needs that is missing or inconsistent."""

    def consumer(self, d: DirView, rel: str) -> Consumer:
        """How this framework's resume loads the file `rel`."""


@dataclass
class Detected:
    layout: Layout
    view: DirView
    info: LayoutInfo
    children: list["Detected"] = field(default_factory=list)
