"""`DirView`: a checkpoint directory walked once (locally with os.walk, remotely with one
listing), the files every layout skips (backups, temp files, a save's staging dirs), and each
file's metadata, pickle root, DCP `.metadata` and JSON read on demand and cached for the run."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from ..atomic import TMP_MARKER
from ..formats import detect_file
from ..formats.dcp import DcpMetadata, read_metadata
from ..formats.torch_zip import data_pkl_name, read_record
from ..model import FileInfo
from ..pickles.scan import scan_bytes
from ..storage import AnyPath, RemotePath, is_remote, open_binary, zip_source
from .versions import Env, default_env

MAX_FILES = 200_000
SKIP_DIRS = frozenset({".ckptdoctor-backup", "__pycache__", ".git"})
# staging dirs of an interrupted save (transformers' tmp-checkpoint-*, any `tmp-*` dir): no
# framework resumes from them, so they are one leftover warning and their contents unjudged
STAGING_PREFIXES = ("tmp-checkpoint-", "tmp-")


class DirView:
    """A directory, walked once, with per-file metadata read on demand and cached."""

    def __init__(self, root: AnyPath, rel: str = "", max_files: int = MAX_FILES,
                 _infos: dict[str, FileInfo] | None = None, env: Env | None = None):
        self.root = root
        self.rel = rel  # this directory relative to the inspected PATH
        # the consumer environment (torch / framework versions) the verdict assumes
        self.env = env if env is not None else default_env()
        # keyed by absolute path and shared with sub-views: each file is read once per run
        self._infos: dict[str, FileInfo] = {} if _infos is None else _infos
        self._roots: dict[str, Any] = {}
        self._dcp: dict[str, DcpMetadata | None] = {}
        self._subs: dict[str, DirView] = {}
        self.truncated = False
        self.files: list[str] = []  # relative to root, '/'-separated, sorted
        self.dirs: list[str] = []
        self.broken_links: list[str] = []
        if root.is_dir():
            self._walk(max_files)

    def _walk(self, max_files: int) -> None:
        if is_remote(self.root):
            return self._walk_remote(self.root, max_files)
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
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in SKIP_DIRS and not d.startswith(TMP_MARKER))
            base = Path(dirpath).relative_to(self.root).as_posix()
            pre = "" if base == "." else base + "/"
            for d in dirnames:
                self.dirs.append(pre + d)
            # a save's staging dir (transformers tmp-checkpoint-*) is reported as one leftover
            # (CK406); its half-written contents belong to no checkpoint and are not read
            dirnames[:] = [d for d in dirnames if not d.startswith(STAGING_PREFIXES)]
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

    def _walk_remote(self, root: RemotePath, max_files: int) -> None:
        """A remote tree (`root`, the view's own): one listing (`find`) for the whole tree, the
        same filters as the local walk (skipped and staging dirs). A sub-view of a listed tree
        lists nothing."""
        session = root.session
        listed = next((r for r in session.listed if root.path == r or
                       root.path.startswith(r + "/")), None)
        if listed is None:
            entries = session.find(root.path)
        else:
            pre = root.path + "/"
            entries = [(k[len(pre):], v) for k, v in session.meta.items()
                       if v is not None and k.startswith(pre)]
        dirs: list[str] = []
        files: list[str] = []
        for rel, meta in sorted(entries, key=lambda e: e[0]):
            parts = rel.split("/")
            if any(p in SKIP_DIRS or p.startswith(TMP_MARKER) for p in parts[:-1]) or \
                    (meta["type"] == "directory" and (parts[-1] in SKIP_DIRS or
                                                      parts[-1].startswith(TMP_MARKER))):
                continue
            if any(p.startswith(STAGING_PREFIXES) for p in parts[:-1]):
                continue  # inside a staging dir: reported once as a leftover, not read
            (dirs if meta["type"] == "directory" else files).append(rel)
        self.dirs = sorted(dirs)
        self.files = sorted(files)[:max_files]
        self.truncated = len(files) > max_files

    # -- queries --
    def has(self, rel: str) -> bool:
        try:  # rel may come from file contents (`latest`, trackers): any name must be safe
            return (self.root / rel).exists()
        except (OSError, ValueError):
            return False

    def top(self) -> list[str]:
        """Names directly in this directory (files and dirs)."""
        return sorted({p.split("/", 1)[0] for p in self.files}
                      | {d.split("/", 1)[0] for d in self.dirs})

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        return [f for f in self.files if fnmatch.fnmatchcase(f, pattern)]

    def info(self, rel: str) -> FileInfo:
        key = str(self.root / rel)
        if key not in self._infos:
            self._infos[key] = detect_file(self.root / rel, self.outer(rel))
        return self._infos[key]

    def outer(self, rel: str) -> str:
        """Path relative to the inspected PATH."""
        return f"{self.rel}/{rel}" if self.rel and rel else (self.rel or rel)

    def pickle_root(self, rel: str) -> Any:
        """Symbolic root of a torch zip's data.pkl or a plain pickle (None if not
        cheap/readable)."""
        if rel not in self._roots:
            self._roots[rel] = read_pickle_root(self.root / rel)
        return self._roots[rel]

    def dcp_metadata(self, sub: str = "") -> DcpMetadata | None:
        """Parsed `<sub>/.metadata` (None when missing or not safely parseable)."""
        if sub not in self._dcp:
            path = self.root / sub / ".metadata"
            try:
                md = read_metadata(path, self.outer(join(sub, ".metadata")))[1] \
                    if path.is_file() and path.stat().st_size else None
            except OSError:
                md = None
            self._dcp[sub] = md
        return self._dcp[sub]

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
            with open_binary(self.root / rel) as fh:
                return fh.read(limit).decode("utf-8", "replace").strip()
        except OSError:
            return None

    def sub(self, rel: str) -> DirView:
        if rel not in self._subs:  # cached: layouts ask per file (consumer) and per check
            self._subs[rel] = DirView(self.root / rel, self.outer(rel), _infos=self._infos,
                                      env=self.env)
        return self._subs[rel]


MAX_ROOT_PICKLE = 64 << 20  # larger data.pkl files are not scanned for a step or a stage


def read_pickle_root(path: AnyPath) -> Any:
    """Symbolic root of a torch zip's data.pkl or of a plain pickle; nothing is unpickled."""
    try:
        with open_binary(path) as fh:
            head = fh.read(2)
        if head == b"PK":
            with zipfile.ZipFile(zip_source(path)) as zf:
                name = data_pkl_name(zf.namelist())
                if name is None or zf.getinfo(name).file_size > MAX_ROOT_PICKLE:
                    return None
                data = read_record(zf, zf.getinfo(name), MAX_ROOT_PICKLE)
        elif head[:1] == b"\x80" and path.stat().st_size <= MAX_ROOT_PICKLE:
            data = path.read_bytes()
        else:
            return None
    except Exception:  # zipfile raises many types on hostile input; the
        return None  # format check reports what is wrong with the file
    return scan_bytes(data, path.name).root


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)
