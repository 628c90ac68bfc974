"""Where checkpoint bytes come from: a local path, or an fsspec URL read by ranges.

The one owner of "a path the user gave": `as_path` turns it into a `pathlib.Path` (local files,
`file://` URLs: today's code path, no fsspec anywhere) or a `RemotePath` (`s3://`, `gs://`,
`hf://`, `http(s)://`, any fsspec protocol). A `RemotePath` answers the small part of the
pathlib API the readers use (`/`, `name`, `suffix`, `parent`, `stat`, `is_file`, `is_dir`,
`exists`, `read_bytes`, `read_text`) and `open_binary` gives a seekable file object that reads
ranges through one per-run cache. Nothing here imports torch.

Costs are bounded and counted: a directory tree is listed with ONE `find` call, each file is read
in ranges (64 KiB read-ahead, 16 KiB blocks, cached for the run so a file is never fetched twice
and every reader sees one snapshot), ranges a reader announces (zip local headers, DCP items) are
fetched concurrently, and every request and byte is counted (`Session.requests`,
`Session.bytes_read`, reported in the JSON). Each ranged read is pinned to the ETag and size the
listing gave (S3 `If-Match`; HTTP `If-Match` plus the `ETag` / `Content-Range` of the answer;
any other filesystem: the length of the answer), so an object that changes during the run is a
CK012 finding for that file, never a mix of two versions.

The package's parts, one owner each: `urls` (which strings are URLs, redaction, storage
options), `errors`, `session` (counters, block cache, ranged requests), `listing` (one `find`
per tree), `remote_path` (`RemotePath`, `AnyPath`), `fileobj` (`RangedFile`, `RemoteStream`),
`access` (open/stat/... for a local or a remote PATH), `connect` (`as_path`, `open_session`)
and `transfer` (convert's `download` / staged `upload`). None of them imports fsspec at import
time: a local run never loads it."""

from __future__ import annotations

from .access import (
    failure_of,
    io_stats,
    is_remote,
    open_binary,
    open_stream,
    prefetch,
    stat,
    zip_source,
)
from .connect import as_path, open_session
from .errors import RemoteReadError, StorageError
from .fileobj import RangedFile, RemoteStream
from .remote_path import AnyPath, RemotePath
from .session import Session
from .transfer import download, upload
from .urls import is_url, parse_options, redact

__all__ = ["AnyPath", "RemotePath", "RangedFile", "RemoteStream", "Session", "StorageError",
           "RemoteReadError", "as_path", "open_session", "is_remote", "is_url", "open_binary",
           "open_stream", "stat", "zip_source", "prefetch", "io_stats", "failure_of",
           "download", "upload", "parse_options", "redact"]
