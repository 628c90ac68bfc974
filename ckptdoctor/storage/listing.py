"""Listing a remote tree: ONE `find` request for everything below a root (an HTML page's
links only where they point below it), sizes by concurrent HEADs where the listing has none,
and the directories an object store implies by prefixes. `norm_info` is what the run keeps of
each entry: size, type, ETag."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from .errors import RemoteReadError

if TYPE_CHECKING:
    from .session import Session


def list_tree(session: Session, root: str) -> list[tuple[str, dict]]:
    """Every file and directory below `root` (one listing request), relative names; each
    entry's metadata is recorded in `session.meta` (later `info` calls need no request)."""
    root = root.rstrip("/")
    session._count()
    try:
        found = session._call("find", session._fs_path(root) + ("/" if session.protocol in (
            "http", "https") else ""), withdirs=True, detail=True)
    except FileNotFoundError:
        found = {}
    out = []
    http = session.protocol in ("http", "https")
    for name, info in sorted(found.items()):
        name = session._native(name).rstrip("/")
        if http:  # links are percent-encoded; fs.encode_url quotes them again
            name = unquote(name)
        if name == root or not name.startswith(root + "/"):
            continue
        rel = name[len(root) + 1:]
        if not rel or rel.startswith("..") or "/../" in f"/{rel}/" or "/./" in f"/{rel}/":
            continue  # a listing (an HTML page) may link anywhere: only what is below root
        norm = norm_info(info)
        session.meta[name] = norm
        out.append((rel, norm))
    session.listed.append(root)
    if http:  # an HTML listing gives no sizes: one HEAD per file, concurrently
        files = [(rel, m) for rel, m in out if m["type"] == "file"]

        def head(item: tuple[str, dict]) -> None:
            path = root + "/" + item[0]
            try:
                got = session._call("info", path)
            except FileNotFoundError:
                return
            except RemoteReadError as exc:  # this file only: its scan becomes the finding
                with session._lock:
                    session.failures.setdefault(path, (exc.code, exc.strerror))
                return
            item[1].update(norm_info(got))

        list(session.pool.map(head, files))
    # directories S3 implies by prefixes but find() did not return
    for rel, _ in list(out):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = root + "/" + "/".join(parts[:i])
            if d not in session.meta:
                session.meta[d] = {"size": 0, "type": "directory", "etag": None}
                out.append(("/".join(parts[:i]), session.meta[d]))
    return out


def norm_info(info: dict) -> dict:
    """An fsspec info dict as the run keeps it: {"size", "type" (file|directory), "etag"}."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or \
        (info.get("last_commit") and None)
    if isinstance(etag, str) and not etag:
        etag = None
    kind = "directory" if info.get("type") == "directory" else "file"
    size = info.get("size")
    return {"size": int(size) if isinstance(size, int) or (isinstance(size, str) and
                                                            size.isdigit()) else 0,
            "type": kind, "etag": etag}
