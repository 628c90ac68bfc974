"""Save a repaired torch zip without reading its tensors into memory.

A repair changes the pickle (data.pkl) and nothing else: the tensors are written back as the
same objects. The transcoding load maps the original (`torch.load(mmap=True)`), so every
storage of the converted object is a slice of one file mapping whose bytes are still on disk.
`torch.save` would read each of them through that mapping, which puts the whole file in this
process's resident memory (file-backed pages stay mapped), then verification reads both files
again: about twice the file size for one file (issue 14 gap 5: 594 MB peak for two 107 MB
DeepSpeed optimizer shards).

`save_streaming` writes the file torch.save would write (protocol-2 data.pkl with the same
persistent ids and tensor reductions, kept objects re-pickled by pickler._KeptPickler, then
`.format_version`, `.storage_alignment`, `byteorder`, 64-byte aligned `data/<key>` records,
`version`, `.data/serialization_id`), but a storage that lies in the mapping of the original is
written by copying its record from the original file in 4 MiB reads into one reused
buffer (page cache, not this process's memory). Storages the rules created (a numpy array
turned into a tensor) are anonymous memory and are written from it. Memory: the pickle plus
one buffer, whatever the size of the file.

Where a storage lies: /proc/self/maps gives every mapping of the original's inode with its file
offset, so a storage's address gives its file offset, which must be exactly the data offset of a
stored `<archive>/data/<key>` record torch's own reader sees (formats/zip_view.torch_records)
holding at least that many bytes. The file is read by descriptor after checking it is still the
inode, size and mtime that were loaded. A storage found nowhere is written from memory, so the
output is complete either way; verification (repair/verify.py) then compares every tensor of
the new file with the converted original."""

from __future__ import annotations

import io
import os
import pickle
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..convert.common import Writeback
from ..convert.torch_writer import ALIGNMENT, aligned_record
from ..formats.zip_view import torch_records
from .pickler import _KeptPickler, contains_kept

MAPS = "/proc/self/maps"
CHUNK = 4 << 20  # bytes per copy step (and per comparison step in repair/verify.py)
_SMALL_RECORD = 64  # byteorder / version records are a few bytes


class NotStreamable(Exception):
    """The original cannot be copied from (not a torch zip, foreign byte order...): save with
    torch.save instead."""


class SourceChanged(Exception):
    """The file at the original's path is no longer the file that was loaded."""


def _same_file(st: os.stat_result, read: os.stat_result) -> bool:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
        read.st_dev, read.st_ino, read.st_size, read.st_mtime_ns)


def mappings_of(dev: int, ino: int, maps: str = MAPS) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of every mapping of the file (dev, ino) in this process."""
    out = []
    try:
        with open(maps) as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) < 5:
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if int(parts[4]) != ino or os.makedev(major, minor) != dev:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, int(parts[2], 16)))
    except (OSError, ValueError):
        return []
    return out


@dataclass
class Source:
    """The original torch zip, open by descriptor: where each of its storage records' data
    starts, and where the process maps it."""

    fh: Any
    archive: str
    records: dict[int, int] = field(default_factory=dict)  # data offset -> stored bytes
    mappings: list[tuple[int, int, int]] = field(default_factory=list)
    byteorder: bytes | None = None
    copied: int = 0  # storages copied from the file
    from_memory: int = 0  # storages written from memory

    def file_offset(self, ptr: int, nbytes: int) -> int | None:
        """The offset in the original of the storage at `ptr` (`nbytes` long), when it is
        exactly the data of one of its storage records; else None."""
        for lo, hi, off in self.mappings:
            if lo <= ptr and ptr + nbytes <= hi:
                pos = ptr - lo + off
                size = self.records.get(pos)
                return pos if size is not None and nbytes <= size else None
        return None

    def read(self, offset: int, n: int) -> bytes:
        self.fh.seek(offset)
        return self.fh.read(n)

    def close(self) -> None:
        self.fh.close()


def open_source(path: Path, read_stat: os.stat_result) -> Source:
    """The original at `path`, checked to be the file loaded at `read_stat`. Raises
    NotStreamable (not a torch zip torch's reader accepts) or SourceChanged."""
    try:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by Source.close
    except OSError as exc:  # deleted, or its directory, since it was read
        raise SourceChanged(f"the file changed since it was read ({exc.strerror}); run "
                            "repair again") from None
    try:
        if not _same_file(os.fstat(fh.fileno()), read_stat):
            raise SourceChanged("the file changed since it was read; run repair again")
        view = torch_records(fh, read_stat.st_size)
        if view.error or not view.records:
            raise NotStreamable(view.error or "no zip records")
        archive = view.records[0].name.split("/", 1)[0]
        src = Source(fh, archive)
        small: dict[str, bytes] = {}
        for r in view.records:
            if r.data_offset is None or r.method != 0:
                continue  # a compressed record: torch cannot map it, so nothing points there
            rest = r.name[len(archive) + 1:] if r.name.startswith(archive + "/") else ""
            if rest.startswith("data/"):
                src.records[r.data_offset] = r.usize
            elif rest in ("byteorder",) and r.usize <= _SMALL_RECORD:
                small[rest] = src.read(r.data_offset, r.usize)
        src.byteorder = small.get("byteorder")
        if src.byteorder is not None and src.byteorder != sys.byteorder.encode():
            # torch byteswaps such storages when it loads them; copying the file's bytes
            # next to native-order new tensors under one byteorder record would be wrong
            raise NotStreamable(f"byte order {src.byteorder!r}")
        st = os.fstat(fh.fileno())
        src.mappings = mappings_of(st.st_dev, st.st_ino)
        return src
    except BaseException:
        fh.close()
        raise


def _pickler(kept: bool) -> Any:
    base: Any = _KeptPickler if kept else pickle.Pickler

    class StoragePickler(base):  # type: ignore[valid-type, misc]
        """torch.save's persistent_id (torch/serialization.py `_save`), collecting storages."""

        def __init__(self, file: io.BytesIO):
            super().__init__(file, protocol=2)
            self.storages: dict[str, Any] = {}
            self._ids: dict[int, str] = {}
            self._dtypes: dict[int, Any] = {}

        def persistent_id(self, obj: Any) -> Any:
            import torch

            if not (isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj)):
                return None
            if isinstance(obj, torch.storage.TypedStorage):
                storage = obj._untyped_storage
                dtype = obj.dtype
                stype = getattr(torch, obj._pickle_storage_type())
                numel = obj._size()
            else:
                storage = obj
                dtype = torch.uint8
                stype = torch.serialization.normalize_storage_type(type(obj))
                numel = storage.nbytes()
            if str(storage.device) != "meta" and storage.data_ptr() != 0:
                seen = self._dtypes.setdefault(storage.data_ptr(), dtype)
                if seen != dtype:
                    raise RuntimeError("Cannot save multiple tensors or storages that view the "
                                       "same data as different types")
            key = self._ids.setdefault(storage._cdata, str(len(self._ids)))
            self.storages[key] = storage
            return ("storage", stype, key, torch.serialization.location_tag(storage), numel)

    return StoragePickler


def pickle_with_storages(obj: Any) -> tuple[bytes, dict[str, Any]]:
    """data.pkl for `obj` as torch.save pickles it (kept objects as pickler.save writes them)
    and its storages by key."""
    buf = io.BytesIO()
    p = _pickler(contains_kept(obj))(buf)
    p.dump(obj)
    return buf.getvalue(), p.storages


def _memory_chunks(storage: Any, nbytes: int):
    import torch

    if storage.device.type != "cpu":
        storage = storage.cpu()
    flat = torch.empty(0, dtype=torch.uint8).set_(storage)
    arr = flat.numpy()
    for i in range(0, nbytes, CHUNK):
        yield arr[i:i + CHUNK]


def save_streaming(obj: Any, target: Path, src: Source) -> None:
    """Write `obj` to `target` (a new file) in torch.save's zip format, copying the storages
    that are records of `src` from its file instead of reading them through memory."""
    data_pkl, storages = pickle_with_storages(obj)
    prefix = src.archive + "/"
    buf = bytearray(min(CHUNK, max((s.nbytes() for s in storages.values()), default=0)))
    with open(target, "xb") as raw:
        wb = Writeback(raw)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            def small(name: str, data: bytes) -> None:
                with aligned_record(zf, raw, prefix + name, len(data)) as fh:
                    fh.write(data)

            small("data.pkl", data_pkl)
            small(".format_version", b"1")
            small(".storage_alignment", str(ALIGNMENT).encode())
            small("byteorder", src.byteorder or sys.byteorder.encode())
            for key, storage in storages.items():
                nbytes = storage.nbytes()
                at = src.file_offset(storage.data_ptr(), nbytes) \
                    if storage.device.type == "cpu" and nbytes else None
                with aligned_record(zf, raw, f"{prefix}data/{key}", nbytes) as fh:
                    if at is None:
                        src.from_memory += 1
                        for part in _memory_chunks(storage, nbytes):
                            fh.write(part)
                            wb.kick(raw.tell())
                        continue
                    src.copied += 1
                    done = 0
                    view = memoryview(buf)
                    src.fh.seek(at)
                    while done < nbytes:
                        got = src.fh.readinto(view[:min(len(buf), nbytes - done)])
                        if not got:
                            raise SourceChanged(f"the original ends inside record data/{key}")
                        fh.write(view[:got])
                        done += got
                        wb.kick(raw.tell())
            small("version", b"3\n")
            small(".data/serialization_id", str(uuid.uuid4().int).zfill(40)[:40].encode())
        raw.flush()


def save_repaired(obj: Any, target: Path, original: Path, read_stat: os.stat_result) -> str:
    """Write the converted object to `target`: streamed from the original when it is a torch
    zip (save_streaming), else with torch.save (pickler.save). Returns how, for the checks.
    Raises SourceChanged when the original is no longer the file that was loaded."""
    from .pickler import save

    try:
        src = open_source(original, read_stat)
    except NotStreamable:
        save(obj, target)
        return "written with torch.save"
    try:
        save_streaming(obj, target, src)
    finally:
        src.close()
    how = f"{src.copied} storage record(s) copied from the original in {CHUNK >> 20} MiB pieces"
    if src.from_memory:
        how += f", {src.from_memory} written from memory"
    return how


__all__ = ["save_repaired", "save_streaming", "open_source", "pickle_with_storages",
           "mappings_of", "Source", "NotStreamable", "SourceChanged"]
