"""`convert` with a URL source and/or destination (docs/remote.md).

A remote source is downloaded first (ranged reads pinned to the listed ETags: storage.download)
into a private temporary directory, and converted there with the local converters, which scan
it before reading any tensor. A remote destination is written locally, verified by the
converter, and only then uploaded (storage.upload: staged keys, sizes checked, final keys
written last, staging removed, S3 multipart uploads aborted on failure). The source is never
written to."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import storage
from .common import ConvertError, ConvertResult, fail


def convert_any(src: Any, dst: Any, to: str, convert, **kwargs: Any) -> ConvertResult:
    """`convert(src, dst, to, **kwargs)` where either side may be a storage.RemotePath."""
    src_remote, dst_remote = storage.is_remote(src), storage.is_remote(dst)
    if not (src_remote or dst_remote):
        return convert(src, dst, to, **kwargs)
    if dst_remote and dst.exists():  # keys of an older save would mix with the new ones
        raise fail(dst, "DST exists: a remote destination must be new (delete it first, or "
                        "pick another prefix)")
    if src_remote and dst_remote and src.session is dst.session and src.path == dst.path:
        raise fail(dst, "DST is SRC: conversions never write over their source")
    base = Path(dst).parent if not dst_remote else None
    work = Path(tempfile.mkdtemp(prefix=".ckptdoctor-remote-", dir=base if base and
                                 base.is_dir() else None))
    try:
        local_src = src
        if src_remote:
            local_src = work / "src" / src.name
            try:
                storage.download(src, local_src)
            except storage.RemoteReadError as exc:
                raise ConvertError(exc.code.finding(str(src), exc.strerror)) from None
        local_dst = work / "out" / dst.name if dst_remote else dst
        if dst_remote:
            local_dst.parent.mkdir(parents=True)
            kwargs = {**kwargs, "overwrite": False}
        result = convert(local_src, local_dst, to, **kwargs)
        if dst_remote and result.ok:
            try:
                urls = storage.upload(local_dst, dst)
            except storage.RemoteReadError as exc:
                raise ConvertError(exc.code.finding(str(dst), exc.strerror)) from None
            result.files = urls
        result.src, result.dst = str(src), str(dst)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["convert_any"]
