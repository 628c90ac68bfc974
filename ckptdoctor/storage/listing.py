"""What a run keeps of each listed or looked-up remote entry (`norm_info`): size, type, ETag,
whatever the filesystem's own info dict calls them. The listing itself is `Session.find`."""

from __future__ import annotations


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
