"""A torch.save file with its pickle(s) rewritten into protocol-2 opcodes (pickles/downgrade.py)
for torch.load(weights_only=True), as a file object: the original's bytes, with only the
rewritten pickle (and, for a zip, a new central directory) held in memory. Nothing is written
to disk and nothing from the file is run."""

from __future__ import annotations

import bisect
import io
import os
import pickletools
from pathlib import Path
from typing import Any, BinaryIO

from ..pickles.downgrade import Downgraded, DowngradeError, rewrite
from .torch_zip import data_pkl_path


class _View(io.RawIOBase):
    """A file made of ranges of an open file and in-memory bytes; a trailing bytearray part
    can be written (zipfile appends the new record and central directory there)."""

    def __init__(self, fh: BinaryIO, parts: list[tuple[int, int] | bytes | bytearray]):
        super().__init__()
        self._fh: Any = fh  # a binary file with readinto (open(..., "rb"))
        self._parts = parts
        self._starts: list[int] = []
        n = 0
        for p in parts:
            self._starts.append(n)
            n += p[1] if isinstance(p, tuple) else len(p)
        self._pos = 0

    def _size(self) -> int:
        last = self._parts[-1]
        return self._starts[-1] + (last[1] if isinstance(last, tuple) else len(last))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return isinstance(self._parts[-1], bytearray)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size()}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        done, size = 0, self._size()
        while done < len(mv) and self._pos < size:
            k = bisect.bisect_right(self._starts, self._pos) - 1
            part, off = self._parts[k], self._pos - self._starts[k]
            plen = part[1] if isinstance(part, tuple) else len(part)
            n = min(len(mv) - done, plen - off)
            if n <= 0:
                break
            if isinstance(part, tuple):
                self._fh.seek(part[0] + off)
                got = self._fh.readinto(mv[done:done + n])
                if not got:
                    raise OSError("the checkpoint file shrank while it was read")
                n = got
            else:
                mv[done:done + n] = part[off:off + n]
            done += n
            self._pos += n
        return done

    def write(self, b: Any) -> int:
        tail, start = self._parts[-1], self._starts[-1]
        if not isinstance(tail, bytearray) or self._pos < start:
            raise OSError("only the in-memory tail of this view is writable")
        data = bytes(b)
        off = self._pos - start
        if off > len(tail):
            tail.extend(b"\0" * (off - len(tail)))
        tail[off:off + len(data)] = data
        self._pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        tail, start = self._parts[-1], self._starts[-1]
        if not isinstance(tail, bytearray) or size < start:
            raise OSError("only the in-memory tail of this view can be truncated")
        del tail[size - start:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


class DowngradedFile(_View):
    """A torch.save file with its pickle(s) rewritten; `info` describes the (main) rewrite."""

    info: Downgraded


def _zip_view(fh: BinaryIO, size: int) -> DowngradedFile:
    import zipfile

    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        if not infos:
            raise DowngradeError("empty zip archive")
        name = data_pkl_path(infos)
        try:
            pkl = zf.read(name)
        except KeyError as exc:
            raise DowngradeError(f"no {name} in the archive") from exc
        start_dir = zf.start_dir
    info = rewrite(pkl)
    if info.end != len(pkl):
        raise DowngradeError(f"{len(pkl) - info.end} bytes after data.pkl's STOP")
    fh.seek(start_dir)
    view = DowngradedFile(fh, [(0, start_dir), bytearray(fh.read(size - start_dir))])
    # Append the new data.pkl and a new central directory; the old record stays unreferenced.
    with zipfile.ZipFile(view, "a") as zf:
        old = zf.getinfo(name)
        at = zf.filelist.index(old)
        zf.filelist.remove(old)
        del zf.NameToInfo[name]
        new = zipfile.ZipInfo(name, date_time=old.date_time)
        new.compress_type = zipfile.ZIP_STORED
        zf.writestr(new, info.data)
        zf.filelist.insert(at, zf.filelist.pop())  # keep the record order
    view.seek(0)
    view.info = info
    return view


def _legacy_view(fh: BinaryIO, size: int) -> DowngradedFile:
    """torch.save's pre-1.6 format: magic, protocol, sys_info, the object and the storage keys
    (five pickles), then raw storage bytes, which are kept in the file."""
    pos, parts = 0, []
    for k in range(5):
        fh.seek(pos)
        try:
            for _ in pickletools.genops(fh):
                pass
        except Exception as exc:
            raise DowngradeError(f"legacy pickle {k + 1} of 5 is malformed: {exc}"[:300]) from exc
        end = fh.tell()
        fh.seek(pos)
        parts.append(rewrite(fh.read(end - pos)))
        pos = end
    main = parts[3]
    view = DowngradedFile(fh, [b"".join(d.data for d in parts), (pos, size - pos)])
    view.info = Downgraded(main.data, max(d.protocol for d in parts),
                           frozenset().union(*(d.added for d in parts)), main.end)
    return view


def open_downgraded(path: str | os.PathLike[str]) -> DowngradedFile:
    """`path` (a torch.save file) as a file object whose pickle(s) use only protocol-2 opcodes,
    for torch.load(weights_only=True). Close it when done. Raises DowngradeError."""
    fh = open(Path(path), "rb")  # noqa: SIM115 - the returned view owns and closes it
    try:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(4)
        fh.seek(0)
        view = _zip_view(fh, size) if head == b"PK\x03\x04" else _legacy_view(fh, size)
    except BaseException:
        fh.close()
        raise
    return view



__all__ = ["open_downgraded", "DowngradedFile"]
