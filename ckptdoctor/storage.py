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
CK012 finding for that file, never a mix of two versions."""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import stat as stat_mod
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote, urlsplit

from .codes import Code

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13

BLOCK = 16 << 10  # cache granularity
READAHEAD = 64 << 10  # a demand read fetches at least this much (zip tails, headers, JSON)
MAX_REQUEST = 8 << 20  # one ranged GET asks for at most this much
CACHE_BYTES = 256 << 20  # bytes kept per run (LRU); a file re-read after eviction is re-checked
CONCURRENCY = 16
DEFAULT_TIMEOUT = 60.0  # seconds per request (async filesystems: s3, gcs, http)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# the extra that provides each protocol's fsspec filesystem (pyproject.toml [project.optional-
# dependencies]); a protocol not named here is fsspec's own (memory, file, ...)
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hf", "http": "http",
          "https": "http"}


class StorageError(Exception):
    """A remote access problem: one line, a stable code (CK010-CK029)."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


class RemoteReadError(OSError):
    """A ranged read failed; carries the finding code for the file (CK012/CK013/CK014/CK016)."""

    strerror: str  # always the message (OSError's may be None): findings and failures need one

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.strerror = message


def is_url(path: Any) -> bool:
    return isinstance(path, str) and bool(_SCHEME.match(path))


def redact(url: str) -> str:
    """A URL safe to print: no user:password@, no query (presigned signatures live there)."""
    url = url.split("?", 1)[0].split("#", 1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1", url)


@dataclass
class _Stat:
    """The part of os.stat_result the readers use."""

    st_size: int
    st_mode: int
    etag: str | None = None


@dataclass
class Session:
    """One run's connection to one filesystem: listing cache, block cache, request counters."""

    fs: Any
    protocol: str
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int | None = None
    secrets: tuple[str, ...] = ()  # option values never printed (redacted from messages)
    requests: int = 0
    bytes_read: int = 0
    meta: dict[str, dict] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)  # roots listed recursively
    failures: dict[str, tuple[Code, str]] = field(default_factory=dict)
    _blocks: OrderedDict = field(default_factory=OrderedDict)
    _cached: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _pool: ThreadPoolExecutor | None = None

    # -- plumbing --
    transport: bool = False  # True: requests are counted where they are sent (S3, HTTP)

    def _count(self, nbytes: int = 0) -> None:
        """One request by ckptdoctor (counted here unless the transport counts them) that
        brought `nbytes` object bytes."""
        with self._lock:
            if not self.transport:
                self.requests += 1
            self.bytes_read += nbytes

    def sent(self) -> None:
        """Transport hook: one HTTP request went out (retries and listings included)."""
        with self._lock:
            self.requests += 1

    def clean(self, text: str) -> str:
        """`text` with every secret (option values, URL credentials) removed."""
        text = re.sub(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]*@", r"\1", text)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def _call(self, name: str, *args, **kwargs):
        """fs.<name>(...) with the run's timeout (async filesystems) and errors as one line."""
        try:
            if getattr(self.fs, "async_impl", False) and hasattr(self.fs, "_" + name):
                from fsspec.asyn import sync

                return sync(self.fs.loop, getattr(self.fs, "_" + name), *args,
                            timeout=self.timeout, **kwargs)
            return getattr(self.fs, name)(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # every backend raises its own types
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> RemoteReadError:
        from fsspec.exceptions import FSTimeoutError

        if isinstance(exc, RemoteReadError):
            return exc
        if isinstance(exc, (FSTimeoutError, TimeoutError)) or \
                "timeout" in type(exc).__name__.lower():
            return RemoteReadError(Code.REMOTE_TIMEOUT,
                                   f"no answer within {self.timeout:g}s (the endpoint is slow or "
                                   "stalled)")
        text = str(exc) or type(exc).__name__
        if "PreconditionFailed" in text or "pre-condition" in text.lower() \
                or "412" in text.split(":", 1)[0]:
            return RemoteReadError(Code.REMOTE_CHANGED, "the object changed during the run "
                                   "(its ETag no longer matches)")
        return RemoteReadError(Code.REMOTE_FAILED,
                               self.clean(f"{type(exc).__name__}: {text}".splitlines()[0])[:300])

    @property
    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="ckptdoctor-io")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- metadata --
    def info(self, path: str) -> dict | None:
        """Size/type/ETag of `path` (None: does not exist). A path under a listed tree is
        answered from the listing (no request)."""
        path = path.rstrip("/") or path
        if path in self.meta:
            return self.meta[path]
        if any(path == r or path.startswith(r + "/") for r in self.listed):
            return None
        self._count()
        try:
            info = self._call("info", self._fs_path(path))
        except FileNotFoundError:
            self.meta[path] = None  # type: ignore[assignment]
            return None
        self.meta[path] = _norm_info(info)
        return self.meta[path]

    def find(self, root: str) -> list[tuple[str, dict]]:
        """Every file and directory below `root` (one listing request), relative names."""
        root = root.rstrip("/")
        self._count()
        try:
            found = self._call("find", self._fs_path(root) + ("/" if self.protocol in (
                "http", "https") else ""), withdirs=True, detail=True)
        except FileNotFoundError:
            found = {}
        out = []
        http = self.protocol in ("http", "https")
        for name, info in sorted(found.items()):
            name = self._native(name).rstrip("/")
            if http:  # links are percent-encoded; fs.encode_url quotes them again
                name = unquote(name)
            if name == root or not name.startswith(root + "/"):
                continue
            rel = name[len(root) + 1:]
            if not rel or rel.startswith("..") or "/../" in f"/{rel}/" or "/./" in f"/{rel}/":
                continue  # a listing (an HTML page) may link anywhere: only what is below root
            norm = _norm_info(info)
            self.meta[name] = norm
            out.append((rel, norm))
        self.listed.append(root)
        if http:  # an HTML listing gives no sizes: one HEAD per file, concurrently
            files = [(rel, m) for rel, m in out if m["type"] == "file"]

            def head(item: tuple[str, dict]) -> None:
                path = root + "/" + item[0]
                try:
                    got = self._call("info", path)
                except FileNotFoundError:
                    return
                except RemoteReadError as exc:  # this file only: its scan becomes the finding
                    with self._lock:
                        self.failures.setdefault(path, (exc.code, exc.strerror))
                    return
                item[1].update(_norm_info(got))

            list(self.pool.map(head, files))
        # directories S3 implies by prefixes but find() did not return
        for rel, _ in list(out):
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = root + "/" + "/".join(parts[:i])
                if d not in self.meta:
                    self.meta[d] = {"size": 0, "type": "directory", "etag": None}
                    out.append(("/".join(parts[:i]), self.meta[d]))
        return out

    def _fs_path(self, path: str) -> str:
        return path

    def _native(self, name: str) -> str:
        if self.protocol in ("http", "https"):
            return name
        return self.fs._strip_protocol(name)

    def url(self, path: str) -> str:
        if self.protocol in ("http", "https"):
            return redact(path)
        return redact(self.fs.unstrip_protocol(path))

    # -- bytes --
    def read(self, path: str, pos: int, n: int) -> bytes:
        """`n` bytes at `pos` (fewer at the end), through the run's block cache."""
        info = self.info(path)
        size = info["size"] if info else 0
        if n <= 0 or pos >= size:
            return b""
        end = min(size, pos + n)
        hi = min(size, max(end, pos + READAHEAD))
        lo = min(pos, max(0, hi - READAHEAD))
        blocks = self._ensure(path, [(lo, hi)], size, keep=range(pos // BLOCK,
                                                                    (end - 1) // BLOCK + 1))
        data = b"".join(blocks[i] for i in range(pos // BLOCK, (end - 1) // BLOCK + 1))
        off = pos - (pos // BLOCK) * BLOCK
        return data[off:off + (end - pos)]

    def prefetch(self, path: str, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch the blocks covering (offset, length) ranges concurrently (readers announce
        the small records they are about to read one by one: zip local headers, DCP items)."""
        info = self.info(path)
        if not info:
            return
        size = info["size"]
        spans = [(max(0, s), min(size, s + n)) for s, n in ranges if n > 0 and s < size]
        if spans:
            self._ensure(path, spans, size)

    def _ensure(self, path: str, spans: list[tuple[int, int]], size: int,
                keep: Iterable[int] = ()) -> dict[int, bytes]:
        want: set[int] = set()
        for lo, hi in spans:
            want.update(range(lo // BLOCK, (hi - 1) // BLOCK + 1))
        got: dict[int, bytes] = {}
        missing = []
        with self._lock:
            for i in sorted(want):
                b = self._blocks.get((path, i))
                if b is None:
                    missing.append(i)
                else:
                    self._blocks.move_to_end((path, i))
                    got[i] = b
        runs: list[tuple[int, int]] = []  # [first block, last block] contiguous, <= MAX_REQUEST
        for i in missing:
            if runs and runs[-1][1] == i - 1 and (i - runs[-1][0] + 1) * BLOCK <= MAX_REQUEST:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
        fetch = [(a * BLOCK, min(size, (b + 1) * BLOCK)) for a, b in runs]
        if len(fetch) == 1:
            results = [self.fetch(path, *fetch[0])]
        elif fetch:
            results = list(self.pool.map(lambda r: self.fetch(path, *r), fetch))
        else:
            results = []
        with self._lock:
            for (start, _end), data in zip(fetch, results, strict=True):
                for k in range(0, len(data), BLOCK):
                    i = start // BLOCK + k // BLOCK
                    got[i] = data[k:k + BLOCK]
                    self._put((path, i), got[i])
        return got

    def _put(self, key: tuple[str, int], data: bytes) -> None:
        if key in self._blocks:
            return
        self._blocks[key] = data
        self._cached += len(data)
        while self._cached > CACHE_BYTES and self._blocks:
            _, old = self._blocks.popitem(last=False)
            self._cached -= len(old)

    def fetch(self, path: str, start: int, end: int) -> bytes:
        """ONE ranged request for [start, end), checked against the listed ETag and size. A
        failure is recorded for the file (`failures`): its scan is replaced by the finding."""
        try:
            return self._fetch(path, start, end)
        except RemoteReadError as exc:
            with self._lock:
                self.failures.setdefault(path, (exc.code, exc.strerror))
            raise

    def _fetch(self, path: str, start: int, end: int) -> bytes:
        info = self.info(path) or {}
        if self.max_bytes is not None and self.bytes_read + (end - start) > self.max_bytes:
            raise RemoteReadError(Code.REMOTE_BUDGET,
                                  f"reading {end - start} more bytes would pass --max-bytes "
                                  f"{self.max_bytes} (read so far: {self.bytes_read})")
        try:
            if self.protocol in ("s3", "s3a"):
                data = self._fetch_s3(path, start, end, info.get("etag"))
            elif self.protocol in ("http", "https"):
                data = self._fetch_http(path, start, end, info)
            else:
                data = self._call("cat_file", path, start=start, end=end)
        except FileNotFoundError:
            raise RemoteReadError(Code.REMOTE_CHANGED, "the object was deleted during the "
                                  "run") from None
        except RemoteReadError:
            raise
        except Exception as exc:  # every backend raises its own types
            raise self._error(exc) from None
        self._count(len(data))
        if len(data) != end - start:
            raise RemoteReadError(Code.REMOTE_CHANGED,
                                  f"asked for bytes {start}-{end} of a {info.get('size')}-byte "
                                  f"object and got {len(data)}: it changed during the run")
        return data

    def _fetch_s3(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(path)

        async def get() -> tuple[bytes, str | None]:
            kw = {"IfMatch": etag} if etag else {}
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key,
                                          Range=f"bytes={start}-{end - 1}", **kw)
            try:
                return await resp["Body"].read(), resp.get("ETag")
            finally:
                resp["Body"].close()

        try:
            data, got = sync(self.fs.loop, get, timeout=self.timeout)
        except Exception as exc:  # every backend raises its own types
            raise self._error(exc) from None
        if etag and got and got != etag:
            raise RemoteReadError(Code.REMOTE_CHANGED, f"the object changed during the run "
                                  f"(ETag {etag} then {got})")
        return data

    def _fetch_http(self, url: str, start: int, end: int, info: dict) -> bytes:
        from fsspec.asyn import sync

        etag = info.get("etag")

        async def get() -> tuple[int, dict, bytes]:
            session = await self.fs.set_session()
            kw = dict(self.fs.kwargs)
            headers = dict(kw.pop("headers", {}) or {})
            headers["Range"] = f"bytes={start}-{end - 1}"
            if etag:
                headers["If-Match"] = etag
            async with session.get(self.fs.encode_url(url), headers=headers, **kw) as r:
                if r.status == 200 and not (start == 0 and end >= (info.get("size") or 0)):
                    return r.status, dict(r.headers), b""  # no range support: read nothing
                return r.status, dict(r.headers), await r.read()

        try:
            status, headers, data = sync(self.fs.loop, get, timeout=self.timeout)
        except Exception as exc:  # every backend raises its own types
            raise self._error(exc) from None
        if status == 412:
            raise RemoteReadError(Code.REMOTE_CHANGED, "the object changed during the run "
                                  "(If-Match failed)")
        if status == 404:
            raise FileNotFoundError(url)
        if status == 200 and not data:
            raise RemoteReadError(Code.REMOTE_NO_RANGES, "the server ignores Range requests; "
                                  "ckptdoctor will not download whole objects to inspect them")
        if status not in (200, 206):
            raise RemoteReadError(Code.REMOTE_FAILED, f"HTTP {status} for a ranged read")
        got = headers.get("ETag") or headers.get("Etag")
        if etag and got and got != etag:
            raise RemoteReadError(Code.REMOTE_CHANGED, f"the object changed during the run "
                                  f"(ETag {etag} then {got})")
        m = re.match(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
        if m and info.get("size") is not None and int(m.group(1)) != info["size"]:
            raise RemoteReadError(Code.REMOTE_CHANGED, f"the object changed during the run "
                                  f"(size {info['size']} then {m.group(1)})")
        return data


def _norm_info(info: dict) -> dict:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or \
        (info.get("last_commit") and None)
    if isinstance(etag, str) and not etag:
        etag = None
    kind = "directory" if info.get("type") == "directory" else "file"
    size = info.get("size")
    return {"size": int(size) if isinstance(size, int) or (isinstance(size, str) and
                                                            size.isdigit()) else 0,
            "type": kind, "etag": etag}


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
    def stat(self) -> _Stat:
        info = self.session.info(self.path)
        if info is None:
            raise FileNotFoundError(2, "no such object", str(self))
        mode = stat_mod.S_IFDIR if info["type"] == "directory" else stat_mod.S_IFREG
        return _Stat(info["size"], mode | 0o444, info.get("etag"))

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


class RangedFile(io.RawIOBase):
    """A seekable, read-only file object over a remote object: reads go through the run's
    block cache as ranged requests. `prefetch` fetches announced ranges concurrently."""

    def __init__(self, path: RemotePath):
        super().__init__()
        self._path = path
        self._size = path.stat().st_size
        self._pos = 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf) -> int:
        data = self._path.session.read(self._path.path, self._pos, len(buf))
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        data = self._path.session.read(self._path.path, self._pos, n)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        self._path.session.prefetch(self._path.path, ranges)


STREAM_CHUNK = 8 << 20  # --deep reads a remote file in ranged requests of this size
STREAM_AHEAD = 4  # ... with this many in flight (parallel ranges, bounded memory)


class RemoteStream(io.RawIOBase):
    """Sequential reading of a whole remote object for --deep / manifests: ranged requests of
    STREAM_CHUNK bytes, STREAM_AHEAD of them in flight, bypassing the block cache (a large
    file would only churn it). Seeking forward skips the bytes without fetching them."""

    def __init__(self, path: RemotePath):
        super().__init__()
        self._path = path
        self._size = path.stat().st_size
        self._pos = 0
        self._ahead: dict[int, Any] = {}  # chunk start -> future
        self._buf, self._buf_at = b"", -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _chunk(self, start: int) -> bytes:
        session = self._path.session
        for k in [k for k in self._ahead if k < start]:  # skipped: never waited for
            self._ahead.pop(k).cancel()
        nxt = start
        while len(self._ahead) < STREAM_AHEAD and nxt < self._size:
            if nxt not in self._ahead:
                self._ahead[nxt] = session.pool.submit(
                    session.fetch, self._path.path, nxt, min(self._size, nxt + STREAM_CHUNK))
            nxt += STREAM_CHUNK
        return self._ahead.pop(start).result()

    def readinto(self, buf) -> int:
        if self._pos >= self._size:
            return 0
        start = self._pos - self._pos % STREAM_CHUNK
        if start != self._buf_at:
            self._buf, self._buf_at = self._chunk(start), start
        off = self._pos - start
        n = min(len(buf), len(self._buf) - off)
        buf[:n] = self._buf[off:off + n]
        self._pos += n
        return n

    def close(self) -> None:
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        super().close()


def open_stream(path: Path | RemotePath | str):
    """For one front-to-back pass (stream.py): unbuffered `open` locally, RemoteStream
    remotely."""
    if isinstance(path, RemotePath):
        return RemoteStream(path)
    return open(path, "rb", buffering=0)


def failure_of(path: Any) -> tuple[Code, str] | None:
    """The (code, message) a remote file's reads failed with, if any."""
    if isinstance(path, RemotePath):
        return path.session.failures.get(path.path)
    return None


# -- whole files: download (convert's remote source), staged upload (convert's remote DST) --

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


# -- the one entry point ---------------------------------------------------------------------

def parse_options(specs: Iterable[str]) -> dict[str, Any]:
    """`--storage-option key=value` (repeatable) -> fsspec storage options. Values that read as
    JSON (numbers, true/false, objects) are parsed; dotted keys nest (client_kwargs.region_name)."""
    import json

    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise StorageError(Code.STORAGE_OPTION, f"--storage-option {spec.split('=')[0]!r} "
                               "is not key=value")
        try:
            val: Any = json.loads(value)
        except ValueError:
            val = value
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StorageError(Code.STORAGE_OPTION, f"--storage-option {key}: conflicting keys")
        node[parts[-1]] = val
    return out


def _secrets(options: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for v in options.values():
        if isinstance(v, dict):
            out.extend(_secrets(v))
        elif isinstance(v, str) and len(v) >= 4:
            out.append(v)
    return tuple(out)


def open_session(url: str, options: dict[str, Any] | None = None, *,
                 timeout: float | None = None, max_bytes: int | None = None
                 ) -> tuple[Session, str]:
    """(Session, fs-native path) for a URL; StorageError (CK010/CK011/CK014) when the
    protocol is unknown, its extra is missing or the filesystem cannot be set up."""
    options = dict(options or {})
    m = _SCHEME.match(url)
    proto = m.group(1).lower() if m else ""
    try:
        import fsspec
        from fsspec.core import url_to_fs
        from fsspec.registry import known_implementations
    except ImportError:  # pragma: no cover - fsspec is a core dependency
        raise StorageError(Code.REMOTE_EXTRA, "URLs need fsspec: pip install fsspec") from None
    if proto not in known_implementations and proto not in fsspec.available_protocols():
        raise StorageError(Code.REMOTE_URL, f"{proto}:// is not a storage protocol fsspec "
                           "knows (s3, gs, hf, http, https, file, ...)")
    if proto in ("http", "https"):
        import aiohttp  # checked here so a missing extra is one line

    extra = EXTRAS.get(proto)
    # a fresh filesystem per run: fsspec caches instances and their listings, and a stale
    # listing would pin reads to an old ETag
    options.setdefault("skip_instance_cache", True)
    if proto in ("s3", "s3a", "http", "https", "gs", "gcs"):
        options.setdefault("use_listings_cache", False)
    hook = _Hook()
    if proto in ("http", "https"):
        import aiohttp  # checked here so a missing extra is one line

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(hook.aiohttp)
        trace.on_request_redirect.append(hook.aiohttp)  # a followed redirect: one more request
        ck = dict(options.get("client_kwargs") or {})
        ck["trace_configs"] = list(ck.get("trace_configs") or []) + [trace]
        options["client_kwargs"] = ck
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError:
        raise StorageError(Code.REMOTE_EXTRA, f"{proto}:// needs the {extra or 'remote'} extra: "
                           f"pip install 'ckptdoctor[{extra or 'remote'}]'") from None
    except (TypeError, ValueError) as exc:
        raise StorageError(Code.STORAGE_OPTION, redact(f"cannot set up {proto}://: {exc}")) \
            from None
    session = Session(fs, proto, timeout=timeout or DEFAULT_TIMEOUT, max_bytes=max_bytes,
                      secrets=_secrets(options))
    hook.session = session
    if proto in ("http", "https"):
        session.transport = True
    elif proto in ("s3", "s3a"):
        session.transport = _hook_s3(session, hook)
    if proto in ("http", "https"):
        path = url.split("?", 1)[0] if "?" not in url else url
    return session, path


class _Hook:
    """Counts requests where the transport sends them (botocore / aiohttp events)."""

    session: Session | None = None

    def botocore(self, **_kw) -> None:
        if self.session is not None:
            self.session.sent()

    async def aiohttp(self, *_args) -> None:
        if self.session is not None:
            self.session.sent()


def _hook_s3(session: Session, hook: _Hook) -> bool:
    """Register a before-send handler on s3fs's botocore client (every request, retries
    included). False when the client cannot be reached (then ckptdoctor counts its calls)."""
    from fsspec.asyn import sync

    try:
        sync(session.fs.loop, session.fs.set_session, timeout=session.timeout)
        session.fs.s3.meta.events.register("before-send.s3", hook.botocore)
    except Exception:  # best effort after a failure that is reported anyway
        return False
    return True


def _check_extra(proto: str) -> None:
    extra = EXTRAS.get(proto)
    module = {"s3": "s3fs", "gcs": "gcsfs", "hf": "huggingface_hub", "http": "aiohttp"}.get(
        extra or "")
    if module is None:
        return
    import importlib.util

    try:
        missing = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # sys.modules[module] = None: marked unimportable
        missing = True
    if missing:
        raise StorageError(Code.REMOTE_EXTRA, f"{proto}:// needs the {extra} extra: "
                           f"pip install 'ckptdoctor[{extra}]'")


def as_path(path: str | os.PathLike | RemotePath, options: dict[str, Any] | None = None, *,
            timeout: float | None = None, max_bytes: int | None = None
            ) -> Path | RemotePath:
    """The user's PATH as the readers take it: a local `Path` (a plain path or `file://`), or
    a `RemotePath` on a fresh per-run Session. Raises StorageError (one line, a code)."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, Path) or not is_url(str(path)):
        return Path(path)
    url = str(path)
    proto = _SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]
    if proto in ("file", "local") and not options:
        return Path(urlsplit(url).path or "/")
    _check_extra(proto)
    session, native = open_session(url, options, timeout=timeout, max_bytes=max_bytes)
    if proto in ("http", "https") and urlsplit(url).path.endswith("/"):
        # HTTP has no directories: a URL ending in / is one (its page lists the files)
        session.meta[native.rstrip("/")] = {"size": 0, "type": "directory", "etag": None}
    return RemotePath(session, native)


def is_remote(path: Any) -> TypeIs[RemotePath]:
    return isinstance(path, RemotePath)


def open_binary(path: Path | RemotePath | str):
    """Open for reading: the builtin `open` for local files (unchanged speed), a RangedFile
    for remote ones."""
    if isinstance(path, RemotePath):
        return path.open()
    return open(path, "rb")


def stat(path: Path | RemotePath | str) -> os.stat_result | _Stat:
    return path.stat() if isinstance(path, RemotePath) else os.stat(path)


def zip_source(path: Path | RemotePath | str):
    """What zipfile.ZipFile / tarfile take: the path itself locally, a RangedFile remotely."""
    return path.open() if isinstance(path, RemotePath) else path


def prefetch(fh: Any, ranges: Iterable[tuple[int, int]]) -> None:
    """Announce ranges about to be read one by one; a no-op for local files."""
    fn = getattr(fh, "prefetch", None)
    if fn is not None:
        fn(ranges)


def io_stats(path: Any) -> dict[str, int] | None:
    """{"bytes_read", "requests"} of a remote run (None for a local path)."""
    if isinstance(path, RemotePath):
        s = path.session
        return {"bytes_read": s.bytes_read, "requests": s.requests}
    return None


__all__ = ["AnyPath", "RemotePath", "RangedFile", "Session", "StorageError", "RemoteReadError",
           "as_path", "is_remote", "is_url", "open_binary", "stat", "zip_source", "prefetch",
           "io_stats", "parse_options", "redact"]
