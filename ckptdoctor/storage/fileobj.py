"""File objects over remote objects: `RangedFile` (seekable, reads through the run's block
cache, announced ranges fetched concurrently) and `RemoteStream` (one front-to-back pass in
large ranged requests, several in flight). `SeekableReader` is the position bookkeeping every
read-only seekable file object here shares (formats.base.FileSlice too)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any, Protocol


class RemoteObject(Protocol):
    """What the file objects need of a remote path (remote_path.RemotePath, which builds them):
    its run's session (reads, prefetch, the request pool), its URL and its size. A protocol,
    so this module does not import the one that imports it."""

    session: Any
    path: str

    def stat(self) -> Any: ...


class SeekableReader(io.RawIOBase):
    """A read-only, seekable raw file object of `_size` bytes: the subclass sets `_size` and
    `_pos` and implements `readinto`; seeking past either end clamps at 0 (never raises)."""

    _size: int
    _pos: int

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


class RangedFile(SeekableReader):
    """A seekable, read-only file object over a remote object: reads go through the run's
    block cache as ranged requests. `prefetch` fetches announced ranges concurrently."""

    def __init__(self, path: RemoteObject):
        super().__init__()
        self._path = path
        self._size = path.stat().st_size
        self._pos = 0
        self.name = str(path)

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


class RemoteStream(SeekableReader):
    """Sequential reading of a whole remote object for --deep / manifests: ranged requests of
    STREAM_CHUNK bytes, STREAM_AHEAD of them in flight, bypassing the block cache (a large
    file would only churn it). Seeking forward skips the bytes without fetching them."""

    def __init__(self, path: RemoteObject):
        super().__init__()
        self._path = path
        self._size = path.stat().st_size
        self._pos = 0
        self._ahead: dict[int, Any] = {}  # chunk start -> future
        self._buf, self._buf_at = b"", -1

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
