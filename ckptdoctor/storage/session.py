"""One run's connection to one filesystem (`Session`): the request and byte counters, the
metadata answered from listings, the per-run block cache, and the ONE ranged request per read,
pinned to the ETag and size the listing gave (a change mid-run is CK012, never a mix of two
versions)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..codes import Code
from .errors import RemoteReadError
from .listing import norm_info
from .urls import redact

BLOCK = 16 << 10  # cache granularity
READAHEAD = 64 << 10  # a demand read fetches at least this much (zip tails, headers, JSON)
MAX_REQUEST = 8 << 20  # one ranged GET asks for at most this much
CACHE_BYTES = 256 << 20  # bytes kept per run (LRU); a file re-read after eviction is re-checked
CONCURRENCY = 16
DEFAULT_TIMEOUT = 60.0  # seconds per request (async filesystems: s3, gcs, http)


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
        self.meta[path] = norm_info(info)
        return self.meta[path]

    def find(self, root: str) -> list[tuple[str, dict]]:
        """Every file and directory below `root` (ONE `find` request; an HTML page's links only
        where they point below it), relative names; each entry's metadata is recorded in
        `self.meta` (later `info` calls need no request). Over HTTP sizes come from concurrent
        HEADs (an HTML listing has none); directories an object store implies by prefixes are
        added."""
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
            norm = norm_info(info)
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
                item[1].update(norm_info(got))

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
