"""Whole files, for convert: `download` (a remote source copied locally with ranged reads
pinned to the listed ETags) and `upload` (a verified local result staged beside the remote
DST, sizes checked, then committed to the final keys, completion markers last)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..codes import Code
from .errors import RemoteReadError
from .remote_path import RemotePath
from .session import MAX_REQUEST, Session


def download(src: RemotePath, dest: Path) -> list[str]:
    """Copy a remote file or tree to the local `dest` (a file path, or a directory for a
    tree) with ranged reads pinned to the listed ETags (a change mid-copy is CK012, never a
    mixed file). Returns the relative names copied."""
    session = src.session
    if src.is_dir():
        entries = session.find(src.path)
        items = [(rel, src / rel) for rel, m in entries if m["type"] == "file"]
    else:
        items = [("", src)]
    for rel, remote in items:
        target = dest / rel if rel else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        size = remote.stat().st_size
        spans = [(a, min(size, a + MAX_REQUEST)) for a in range(0, size, MAX_REQUEST)]
        with open(target, "wb") as out:
            out.truncate(size)

            def put(span: tuple[int, int], out=out, remote=remote) -> None:
                data = session.fetch(remote.path, *span)
                os.pwrite(out.fileno(), data, span[0])

            list(session.pool.map(put, spans))
    return [rel for rel, _ in items]


def _commit_order(rel: str) -> tuple[int, str]:
    """Files a reader treats as 'the save is complete' (indexes, DCP .metadata, DeepSpeed
    `latest`, JSON state) are copied to their final keys last."""
    name = rel.rsplit("/", 1)[-1]
    marker = name.endswith((".json", ".metadata")) or \
        name in ("latest", "latest_checkpointed_iteration.txt")
    return (1 if marker else 0, rel)


def upload(local: Path, dst: RemotePath) -> list[str]:
    """Upload a verified local file or tree to `dst`: every file goes to a staging prefix
    beside `dst` first, the staged sizes are checked against the local files, and only then
    are the final keys written (server-side copies, completion markers last); the staging
    prefix is removed. On any failure the staging prefix is deleted and, on S3, multipart
    uploads under it are aborted: nothing appears at the final keys. Returns final URLs."""
    import secrets as _secrets

    session, fs = dst.session, dst.session.fs
    staging = dst.parent / f".ckptdoctor-staging-{_secrets.token_hex(6)}"
    files = sorted((p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()),
                   key=_commit_order) if local.is_dir() else [""]
    staged = {rel: (staging / (f"{dst.name}/{rel}" if rel else dst.name)) for rel in files}
    try:
        for rel in files:
            session._count()
            session._call("put_file", str(local / rel) if rel else str(local), staged[rel].path)
        fs.invalidate_cache()
        for rel in files:
            want = (local / rel if rel else local).stat().st_size
            got = session._call("info", staged[rel].path).get("size")
            session._count()
            if got != want:
                raise RemoteReadError(Code.REMOTE_CHANGED, f"staged {rel or dst.name} holds "
                                      f"{got} bytes, not {want}: not committed")
        out = []
        for rel in files:
            final = dst / rel if rel else dst
            session._count()
            session._call("copy", staged[rel].path, final.path)
            out.append(str(final))
        return out
    except BaseException:
        _abort_multipart(session, staging)
        raise
    finally:
        with contextlib.suppress(OSError, FileNotFoundError):
            session._call("rm", staging.path, recursive=True)


def _abort_multipart(session: Session, prefix: RemotePath) -> None:
    """S3: abort every unfinished multipart upload under `prefix` (they cost storage and
    never appear as objects)."""
    if session.protocol not in ("s3", "s3a"):
        return
    from fsspec.asyn import sync

    bucket, key, _ = session.fs.split_path(prefix.path)

    async def abort() -> None:
        listed = await session.fs._call_s3("list_multipart_uploads", Bucket=bucket,
                                           Prefix=key)
        for up in listed.get("Uploads", []):
            await session.fs._call_s3("abort_multipart_upload", Bucket=bucket,
                                      Key=up["Key"], UploadId=up["UploadId"])

    with contextlib.suppress(Exception):  # best effort after a failure that is reported anyway
        sync(session.fs.loop, abort, timeout=session.timeout)

