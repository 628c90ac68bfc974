"""Backups of originals, and `undo`.

A repair run that replaces anything opens one session directory:

    <root>/.ckptdoctor-backup/<UTC timestamp>/        (or <--backup-dir>/<timestamp>/)
        manifest.json                                  what was backed up, written atomically
        <relative path of each original>               byte-identical copy, fsynced

Each original is hard-linked into the session when the session is on the same filesystem
(nothing is copied: the new file is renamed over the original path, so the link keeps the
original's inode and bytes), else copied and the copy hashed against the original, *before* the
new file is renamed over it, and the manifest entry is written before the rename too, so a crash
at any point leaves either the untouched original or the new file plus a complete backup. Files a
repair creates (a .safetensors, sidecars, the allow-list) are listed under "created" before they
are written, so `undo` can remove them. `undo` restores the newest session not yet undone."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..atomic import atomic_writer, fsync_dir, write_bytes
from ..errors import BackupRefused

BACKUP_DIRNAME = ".ckptdoctor-backup"
MANIFEST = "manifest.json"


def in_backup_tree(path: Path) -> bool:
    """True when `path` lies inside a .ckptdoctor-backup tree (never repaired, backed up or
    undone: doing so nests backups inside backups)."""
    return BACKUP_DIRNAME in Path(os.path.abspath(path)).parts


def safe_rel(root: Path, rel: Any) -> Path | None:
    """root/rel when `rel` (read from a manifest or allow-list file: input, never authority) is
    a plain relative POSIX path inside root: not absolute, no '..' or empty part, no
    .ckptdoctor-backup part, no symlinked component. Else None."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("/") or any(
            part in ("..", ".", "") for part in rel.split("/")) or BACKUP_DIRNAME in pure.parts:
        return None
    cur = Path(root)
    for part in pure.parts:
        cur = cur / part
        if cur.is_symlink():
            return None
    return cur


def check_backup_root(backup_root: Path) -> None:
    """BackupRefused when the backup directory (or a session under it) is a symlink."""
    if os.path.islink(backup_root):
        raise BackupRefused(f"{backup_root} is a symlink; ckptdoctor does not follow it for "
                            "backups or undo")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy src to dst durably (temp + fsync + rename + dir fsync), metadata too; return the
    sha256 of what was read, after checking the copy reads back the same."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(src, "rb") as fi, atomic_writer(dst) as fo:
        while block := fi.read(8 << 20):
            h.update(block)
            fo.write(block)
    shutil.copystat(src, dst)
    digest = h.hexdigest()
    if sha256_file(dst) != digest:
        raise OSError(f"backup copy of {src} does not read back identically")
    return digest


def link_or_copy_hashed(src: Path, dst: Path) -> tuple[str, str]:
    """Back up `src` at `dst`: a hard link when both are on one filesystem, else a copy
    (copy_hashed). Returns (sha256 of the original, "hardlink" | "copy").

    A hard link copies nothing, and is sound here because a repair never writes an original in
    place: the replacement is written to a temp file, verified, and renamed over the original
    path (atomic.commit), so the original inode - now only the backup's - keeps its bytes.
    Only a regular, non-symlinked file is linked."""
    from ..atomic import tmp_path_for

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        same_fs = (src.is_file() and not src.is_symlink()
                   and os.stat(src).st_dev == os.stat(dst.parent).st_dev)
    except OSError:
        same_fs = False
    if same_fs:
        tmp = tmp_path_for(dst)
        try:
            os.link(src, tmp, follow_symlinks=False)
        except OSError:  # no hard links here (some network / FUSE file systems): copy
            pass
        else:
            os.replace(tmp, dst)
            fsync_dir(dst.parent)
            return sha256_file(dst), "hardlink"
    return copy_hashed(src, dst), "copy"


def checkpoint_root(p: Path) -> Path:
    """The checkpoint a repair of / undo for PATH works on: PATH itself when it is a directory,
    else the file's own directory. Its .ckptdoctor-backup is the only default backup root;
    directories above it are never searched (a manifest there is no authority)."""
    return p if p.is_dir() else p.parent


def default_backup_root(root: Path) -> Path:
    return root / BACKUP_DIRNAME


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass
class Session:
    """One repair run's backup directory."""

    dir: Path
    root: Path  # the checkpoint root the relative paths start from
    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, backup_root: Path, root: Path) -> Session:
        check_backup_root(backup_root)
        backup_root.mkdir(parents=True, exist_ok=True)
        check_backup_root(backup_root)
        stamp = _timestamp()
        d = backup_root / stamp
        n = 0
        while d.exists():
            n += 1
            d = backup_root / f"{stamp}-{n}"
        d.mkdir()
        fsync_dir(backup_root)
        s = cls(d, root, {"version": 1, "tool": "ckptdoctor repair",
                          "root": str(Path(root).absolute()),
                          "created_at": stamp, "files": [], "created": [], "complete": False,
                          "undone": False})
        s.save()
        return s

    @classmethod
    def open(cls, d: Path) -> Session | None:
        try:
            doc = json.loads((d / MANIFEST).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("version") != 1:
            return None
        return cls(d, Path(doc.get("root", "")), doc)

    def save(self) -> None:
        write_bytes(self.dir / MANIFEST, (json.dumps(self.doc, indent=1) + "\n").encode())

    def backup(self, rel: str, src: Path, kind: str = "original") -> Path:
        """Back up `src` (at `rel` under the root) into the session - hard-linked on the same
        filesystem, else copied - and record it."""
        dst = safe_rel(self.dir, rel)
        if dst is None:
            raise BackupRefused(f"{rel}: not a plain path inside the checkpoint; not backed up")
        digest, how = link_or_copy_hashed(src, dst)
        self.doc["files"].append({"rel": rel, "sha256": digest, "size": src.stat().st_size,
                                  "kind": kind, "status": "backed-up", "how": how})
        self.save()
        return dst

    def created(self, rel: str, owner: str = "") -> None:
        """Record (before writing it) a file this run creates; `owner`: the original it
        belongs to (undo of that one file removes it too)."""
        entry = {"rel": rel, "for": owner}
        if entry not in self.doc["created"]:
            self.doc["created"].append(entry)
            self.save()

    def set_status(self, rel: str, status: str, **extra: Any) -> None:
        for entry in self.doc["files"]:
            if entry["rel"] == rel:
                entry["status"] = status
                entry.update(extra)
        self.save()

    def finish(self) -> None:
        self.doc["complete"] = True
        self.save()


def sessions(backup_root: Path) -> list[Session]:
    """Sessions under backup_root, oldest first."""
    if not backup_root.is_dir():
        return []
    check_backup_root(backup_root)
    out = []
    for d in sorted(p for p in backup_root.iterdir() if p.is_dir() and not p.is_symlink()):
        s = Session.open(d)
        if s is not None:
            out.append(s)
    return out


def _session_for_file(p: Path, backup_dir: Path | None) -> tuple[Session, Path, str] | None:
    """The newest session (not undone) holding file `p`: searched in --backup-dir, else only in
    the .ckptdoctor-backup of p's own directory (`checkpoint_root`, the rule repair writes by).
    Never upward: a session planted in a parent (say a shared /tmp) would otherwise become
    authority to overwrite p and delete files outside the checkpoint. To undo one file of a
    repaired parent directory, name that directory's backup with --backup-dir."""
    broots = [backup_dir] if backup_dir else [default_backup_root(checkpoint_root(p))]
    found: list[tuple[str, Session, Path, str]] = []
    for broot in broots:
        for s in sessions(broot):
            if s.doc.get("undone"):
                continue
            root = broot.parent.absolute()
            if backup_dir is not None:  # the manifest's root only when p lies under it
                doc_root = s.doc.get("root")
                if not isinstance(doc_root, str) or not doc_root:
                    continue
                root = Path(doc_root).absolute()
                if root == Path(root.anchor):
                    continue
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                continue
            if (any(isinstance(e, dict) and e.get("rel") == rel
                    for e in s.doc.get("files", []))
                    and rel not in s.doc.get("undone_files", [])):
                found.append((s.dir.name, s, root, rel))
    if not found:
        return None
    _, s, root, rel = max(found, key=lambda x: x[0])
    return s, root, rel


def undo(path: str | os.PathLike, backup_dir: str | os.PathLike | None = None) -> list[Path]:
    """Restore the newest backup session not yet undone (for a file PATH: the newest one that
    holds it, and only that file). Returns the restored paths. Every copy is checked against
    the hash recorded at backup time before anything is restored; files the repair created are
    removed. Raises FileNotFoundError when there is nothing to restore."""
    p = Path(path).absolute()
    bdir = Path(backup_dir).absolute() if backup_dir else None
    if in_backup_tree(p):
        raise BackupRefused(f"{p} is inside a {BACKUP_DIRNAME} tree; undo restores "
                            "checkpoints, not backups")
    if bdir is not None:
        check_backup_root(bdir)
    if p.is_dir():
        only = None
        root = checkpoint_root(p)
        broot = bdir or default_backup_root(root)
        cands = [s for s in sessions(broot) if not s.doc.get("undone")]
        if not cands:
            raise FileNotFoundError(f"no ckptdoctor backup to restore under {broot}")
        s = cands[-1]
    else:
        hit = _session_for_file(p, bdir)
        if hit is None:
            raise FileNotFoundError(f"no ckptdoctor backup holds {p}")
        s, root, only = hit
    files = s.doc.get("files")
    if not isinstance(files, list) or not all(isinstance(e, dict) for e in files):
        raise BackupRefused(f"{s.dir / MANIFEST}: malformed manifest; nothing was restored")
    entries = [e for e in files if only is None or e.get("rel") == only]
    pairs: list[tuple[Path, Path]] = []
    for entry in entries:  # every path is checked before anything is written
        src, dst = safe_rel(s.dir, entry.get("rel")), safe_rel(root, entry.get("rel"))
        if src is None or dst is None:
            raise BackupRefused(f"{s.dir / MANIFEST}: {entry.get('rel')!r} is not a plain "
                                "relative path inside the checkpoint; nothing was restored")
        if not src.is_file() or sha256_file(src) != entry.get("sha256"):
            raise OSError(f"backup copy {src} is missing or damaged; nothing was restored")
        pairs.append((src, dst))
    created_targets: list[Path] = []
    backed = {e.get("rel") for e in files}
    for created in s.doc.get("created", []) if isinstance(s.doc.get("created"), list) else []:
        if not isinstance(created, dict):
            continue
        rel = created.get("rel")
        if (only is not None and created.get("for") != only) or rel in backed:
            continue
        target = safe_rel(root, rel)
        if target is None:
            raise BackupRefused(f"{s.dir / MANIFEST}: created path {rel!r} is not a plain "
                                "relative path inside the checkpoint; nothing was restored")
        created_targets.append(target)
    restored: list[Path] = []
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fi, atomic_writer(dst) as fo:
            shutil.copyfileobj(fi, fo, 8 << 20)
        shutil.copystat(src, dst)
        restored.append(dst)
    for target in created_targets:
        if target.is_file() and not target.is_symlink():
            target.unlink()
            fsync_dir(target.parent)
    if only is None:
        s.doc["undone"] = True
    else:
        s.doc.setdefault("undone_files", []).append(only)
    s.save()
    return restored


__all__ = ["BACKUP_DIRNAME", "BackupRefused", "in_backup_tree", "safe_rel", "check_backup_root",
           "Session", "sessions", "undo", "sha256_file", "copy_hashed",
           "default_backup_root", "checkpoint_root"]
