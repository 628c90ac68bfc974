"""One sequential read per file, in bounded memory: every byte is read once into a reused
buffer and fed, in the same pass, to

- CRC-32 for every torch-zip record (torch writes CRCs and never checks them),
- a NaN/Inf bit test on the raw bytes for every floating tensor (numpy, no torch),
- hashlib.sha256 of the whole file when a manifest is written or verified.

zlib, hashlib and numpy release the GIL, so files can be streamed from several threads.
Nothing here imports torch."""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .codes import Code
from .formats.zip_view import LOCAL_SIG
from .model import FileInfo, Finding, FormatName
from .storage import AnyPath, is_remote, open_binary, open_stream, stat

if TYPE_CHECKING:
    import numpy as np
try:  # the same CRC-32 as zlib's, with carry-less multiply: about 5x zlib 1.2's speed here
    from zlib_ng.zlib_ng import crc32
except ImportError:  # the `fast` extra is not installed
    from zlib import crc32
# numpy is imported by the value checks themselves: a run that checks no floating tensor
# (hashing, CRCs of integer data, static validate) never pays for importing it.

CHUNK = 4 << 20  # bytes per read; a multiple of every element size
MEMORY_BUDGET = 96 << 20  # buffers of all threads together (each uses about 3 chunks)


def chunk_for(jobs: int) -> int:
    """Chunk size so `jobs` threads stay within MEMORY_BUDGET: 4 MiB down to 1 MiB."""
    size = MEMORY_BUDGET // (3 * max(1, jobs))
    return max(1 << 20, min(CHUNK, size - size % (64 << 10)))
Progress = Callable[[str, int], None]


# --- NaN / Inf from bits ----------------------------------------------------------------------
# dtype -> (unsigned view, exponent mask, value meaning "all ones"), or a byte equality test.
# IEEE formats: NaN or Inf <=> exponent bits all ones. fp8 variants by their own encodings:
# e4m3fn has no Inf and one NaN pattern per sign (S.1111.111); e5m2 is IEEE-like; the *fnuz
# variants have a single NaN, 0x80 (negative zero's bit pattern); e8m0fnu's NaN is 0xFF.
_BITS: dict[str, tuple[str, int, int]] = {
    "float32": ("u4", 0x7F800000, 0x7F800000),
    "float64": ("u8", 0x7FF0000000000000, 0x7FF0000000000000),
    "float16": ("u2", 0x7C00, 0x7C00),
    "bfloat16": ("u2", 0x7F80, 0x7F80),
    "float8_e4m3fn": ("u1", 0x7F, 0x7F),
    "float8_e5m2": ("u1", 0x7C, 0x7C),
    "float8_e4m3fnuz": ("u1", 0xFF, 0x80),
    "float8_e5m2fnuz": ("u1", 0xFF, 0x80),
    "float8_e8m0fnu": ("u1", 0xFF, 0xFF),
    # complex: two components per element; an element is bad when either component is
    "complex32": ("u2", 0x7C00, 0x7C00),
    "complex64": ("u4", 0x7F800000, 0x7F800000),
    "complex128": ("u8", 0x7FF0000000000000, 0x7FF0000000000000),
}
CHECKED_DTYPES = frozenset(_BITS)
# Fast screen: for sign-magnitude formats a value is NaN/Inf iff its magnitude bits are at
# least "exponent all ones" (e4m3fn: S.1111.111 is the maximum magnitude pattern). Read as
# integers, the positive bad values are then the largest *signed* values of the chunk and the
# negative ones the largest *unsigned* values (sign bit set, magnitude >= the threshold): two
# max() reductions clear a chunk, with no AND pass and no output buffer. Only a chunk that fails
# the screen builds a mask. (mask of the magnitude bits, least bad magnitude)
_SCREEN: dict[str, tuple[int, int]] = {
    "float32": (0x7FFFFFFF, 0x7F800000), "float64": (0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
    "float16": (0x7FFF, 0x7C00), "bfloat16": (0x7FFF, 0x7F80), "float8_e4m3fn": (0x7F, 0x7F),
    "float8_e5m2": (0x7F, 0x7C), "float8_e8m0fnu": (0xFF, 0xFF), "complex32": (0x7FFF, 0x7C00),
    "complex64": (0x7FFFFFFF, 0x7F800000),
    "complex128": (0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def maybe_nonfinite(data, dtype: str, byteorder: str = "little") -> bool:
    """False when `data` certainly holds no NaN/Inf (cheap); True when it may (then build the
    mask with nonfinite_mask)."""
    if dtype not in _BITS:
        return False
    import numpy as np

    kind = _BITS[dtype][0]
    order = "<" if byteorder == "little" else ">"
    view = np.frombuffer(data, dtype=order + kind)
    if not len(view):
        return False
    spec = _SCREEN.get(dtype)
    if spec is None:  # the *fnuz fp8 types: one NaN pattern, 0x80
        return bool((view == 0x80).any())
    magnitude, least = spec
    if magnitude == np.iinfo(view.dtype).max:  # no sign bit (e8m0fnu)
        return bool(view.max() >= least)
    sign = magnitude + 1
    return bool(view.max() >= sign | least or
                view.view(order + "i" + kind[1:]).max() >= least)


def nonfinite_mask(data, dtype: str, byteorder: str = "little") -> np.ndarray | None:
    """Boolean mask, one entry per element, of the NaN/Inf elements in raw `data` (bytes-like,
    a whole number of elements), or None when `dtype` has no NaN/Inf encoding."""
    spec = _BITS.get(dtype)
    if spec is None:
        return None
    kind, mask, want = spec
    import numpy as np

    view = np.frombuffer(data, dtype=("<" if byteorder == "little" else ">") + kind)
    bad = (view & view.dtype.type(mask)) == view.dtype.type(want)
    if dtype.startswith("complex"):
        bad = bad.reshape(-1, 2).any(axis=1)
    return bad


def element_size(dtype: str) -> int:
    kind = _BITS[dtype][0]
    return int(kind[1:]) * (2 if dtype.startswith("complex") else 1)


class NonfiniteCounter:
    """Counts NaN/Inf per tensor over a storage fed in element-aligned chunks. Several tensors
    may view one storage (views, tied weights): each is counted over its own element range."""

    def __init__(self, dtype: str, tensors: list[tuple[str, int, int]], byteorder: str = "little"):
        self.dtype, self.byteorder = dtype, byteorder
        self.itemsize = element_size(dtype)
        self.tensors = tensors  # (name, first element, end element)
        self.counts: dict[str, int] = {}
        self._elements = 0  # elements fed so far
        self._carry = b""  # a partial element left at the end of a chunk (unaligned regions)

    def feed(self, chunk) -> None:
        if self._carry:
            need = self.itemsize - len(self._carry)
            head, chunk = self._carry + bytes(chunk[:need]), chunk[need:]
            self._carry = b""
            if len(head) < self.itemsize:
                self._carry = head
                return
            self._count(head)
        cut = len(chunk) - len(chunk) % self.itemsize
        if cut != len(chunk):
            self._carry = bytes(chunk[cut:])
            chunk = chunk[:cut]
        if cut:
            self._count(chunk)

    def _count(self, data) -> None:
        n = len(data) // self.itemsize
        if not maybe_nonfinite(data, self.dtype, self.byteorder):
            self._elements += n
            return
        import numpy as np

        bad = nonfinite_mask(data, self.dtype, self.byteorder)
        if bad is None:  # maybe_nonfinite is False for dtypes without NaN/Inf
            self._elements += n
            return
        base = self._elements
        for name, lo, hi in self.tensors:  # count each tensor over its part of this chunk
            a, b = max(lo - base, 0), min(hi - base, n)
            if a < b:
                c = int(np.count_nonzero(bad[a:b]))
                if c:
                    self.counts[name] = self.counts.get(name, 0) + c
        self._elements += n


# --- regions of a file ------------------------------------------------------------------------
@dataclass
class Region:
    """A byte range [start, end) of a file and what to do with its bytes."""

    start: int
    end: int
    record: str | None = None  # zip record name: CRC32 checked against `crc`
    crc: int = 0
    counters: list[NonfiniteCounter] = field(default_factory=list)
    computed: int = 0
    short: bool = False  # the file ended before `end`
    header_problem: str = ""  # the record's local header disagrees with the central directory

    def feed(self, chunk) -> None:
        self.feed_crc(chunk)
        self.feed_values(chunk)

    def feed_crc(self, chunk) -> None:
        if self.record is not None:
            self.computed = crc32(chunk, self.computed)

    def feed_values(self, chunk) -> None:
        for c in self.counters:
            c.feed(chunk)


@dataclass
class FileOutcome:
    """What the single pass over one file found: the bytes read, the sha256 (when asked) and
    findings (plain data: ranks exchange it as JSON, dist.py). stream_file fills in the bytes,
    the hash and, when the file cannot be read, that finding; deep.check_file adds the findings
    it derives from the regions' CRCs and counts."""

    rel: str
    findings: list[Finding] = field(default_factory=list)
    sha256: str | None = None
    nbytes: int = 0


def nonfinite_counts(regions: list[Region]) -> dict[str, int]:
    """NaN/Inf count per tensor name, over every region's counters."""
    out: dict[str, int] = {}
    for r in regions:
        for c in r.counters:
            for k, v in c.counts.items():
                out[k] = out.get(k, 0) + v
    return out


def plan_regions(path: AnyPath, info: FileInfo | None, nonfinite: bool = True) -> list[Region]:
    """What to check in `path`, from its metadata. Unknown formats get no regions (hash only)."""
    if info is None:
        return []
    if info.format == FormatName.TORCH_ZIP:
        return _zip_regions(path, info, nonfinite)
    if info.format == FormatName.SAFETENSORS and nonfinite:
        return _safetensors_regions(info)
    if info.format == FormatName.DCP_SHARD:
        return _dcp_regions(path, nonfinite)
    if info.format == FormatName.TORCH_LEGACY and nonfinite:
        return legacy_regions(path, info) or []
    return []


def legacy_regions(path: AnyPath, info: FileInfo) -> list[Region] | None:
    """Pre-1.6 torch files: five pickles, then each storage as an 8-byte little-endian element
    count and its raw bytes, in the order of the fifth pickle's keys (the layout the static scan
    walks). One region per storage, its tensors' element ranges from the scanned metadata.
    None when the file is not in that layout (the tar format, a big-endian writer, a broken
    walk): the caller then falls back."""
    from .formats.torch_legacy import LEGACY_MAGIC
    from .pickles.scan import SymList, lookup, scan_stream

    by_storage: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for t in info.tensors:
        if t.storage is not None and t.dtype in CHECKED_DTYPES:
            lo = t.offset or 0
            by_storage.setdefault(t.storage, {}).setdefault(t.dtype, []).append(
                (t.name, lo, lo + t.numel))
    out: list[Region] = []
    with open_binary(path) as fh:
        if not fh.read(len(LEGACY_MAGIC)).startswith(LEGACY_MAGIC):
            return None
        fh.seek(0)
        scans = [scan_stream(fh, info.path) for _ in range(5)]
        if not all(sc.complete for sc in scans) or not isinstance(scans[4].root, SymList):
            return None
        if lookup(scans[2].root, "little_endian") is False:
            return None
        sizes = {str(st.key): st.itemsize for st in scans[3].storages}
        size = stat(path).st_size
        for key in (str(k) for k in scans[4].root):
            raw = fh.read(8)
            if len(raw) < 8:
                return None
            start = fh.tell()
            end = start + int.from_bytes(raw, "little") * sizes.get(key, 1)
            if end > size:
                return None
            reg = Region(start, end)
            for dtype, tensors in by_storage.get(key, {}).items():
                reg.counters.append(NonfiniteCounter(dtype, sorted(tensors, key=lambda x: x[1])))
            if reg.counters:
                out.append(reg)
            fh.seek(end)
    return out


def _dcp_regions(path: AnyPath, nonfinite: bool) -> list[Region]:
    """A .distcp shard holds one torch.save zip per item, back to back, where the sibling
    .metadata says (metadata only: nothing is unpickled). Each item's records are checked
    like a torch zip's, its tensor named by the item's fully qualified name."""
    from .formats.base import FileSlice
    from .formats.dcp import read_metadata
    from .formats.torch_zip import scan_zip

    meta = path.parent / ".metadata"
    if not meta.is_file():
        return []
    md = read_metadata(meta, ".metadata")[1]
    if md is None:
        return []
    out: list[Region] = []
    with open_binary(path) as fh:
        for e in md.storage:
            if e.relative_path != path.name:
                continue
            item = FileSlice(fh, e.offset, e.length)
            info = scan_zip(item, e.fqn)
            if info.format != FormatName.TORCH_ZIP or any(f.severity.name == "ERROR"
                                                          for f in info.findings):
                continue  # BytesIO items and broken ones: the static checks report them
            info.tensors = [t.__class__(e.fqn, t.dtype, t.shape, t.nbytes, t.storage, t.offset)
                            for t in info.tensors]
            item.seek(0)
            for r in _zip_regions(item, info, nonfinite):
                r.start += e.offset
                r.end += e.offset
                r.record = f"{e.fqn}!{r.record}"
                out.append(r)
    return out


def _zip_regions(path: AnyPath | BinaryIO, info: FileInfo, nonfinite: bool) -> list[Region]:
    order = info.meta.get("byteorder") or "little"
    prefix = info.meta.get("archive_name")
    by_storage: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for t in info.tensors if nonfinite else []:
        if t.storage is None or t.dtype not in CHECKED_DTYPES:
            continue
        lo = t.offset or 0
        by_storage.setdefault(t.storage, {}).setdefault(t.dtype, []).append(
            (t.name, lo, lo + t.numel))
    regions = []
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_binary(path)) if isinstance(path, Path) or \
            is_remote(path) else path
        zf = stack.enter_context(zipfile.ZipFile(raw))

        def pread(n: int, at: int) -> bytes:
            raw.seek(at)
            return raw.read(n)

        for i in zf.infolist():
            if i.compress_type != zipfile.ZIP_STORED:
                continue  # reported by the static scan; never inflated here
            # Data starts after the local header: 30 bytes + name + extra (local lengths).
            # The name is read with it: the static scan leaves the storages' local headers to
            # this pass (formats/zip_view.torch_records), so they are checked here.
            name = i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437",
                                          "replace")
            head = pread(30 + len(name), i.header_offset)
            if len(head) < 30:
                regions.append(Region(i.header_offset, i.header_offset, i.filename, i.CRC,
                                      short=True))
                continue
            n, m = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
            start = i.header_offset + 30 + n + m
            reg = Region(start, start + i.compress_size, i.filename, i.CRC)
            if head[:4] != LOCAL_SIG:
                reg.header_problem = f"no local header at offset {i.header_offset}"
            elif head[30:30 + n] != name:
                local = head[30:30 + n].decode("utf-8", "replace")
                reg.header_problem = f"the local header names it {local!r}"
            if prefix is not None and i.filename.startswith(f"{prefix}/data/"):
                key = i.filename[len(prefix) + 6:]
                for dtype, tensors in by_storage.get(key, {}).items():
                    reg.counters.append(NonfiniteCounter(dtype, sorted(tensors, key=lambda x: x[1]),
                                                         order))
            regions.append(reg)
    return regions


def _safetensors_regions(info: FileInfo) -> list[Region]:
    base = info.meta.get("data_start", 0)
    out = []
    for t in info.tensors:
        if t.offset is None or t.dtype not in CHECKED_DTYPES:
            continue
        out.append(Region(base + t.offset, base + t.offset + t.nbytes,
                          counters=[NonfiniteCounter(t.dtype, [(t.name, 0, t.numel)])]))
    return out


def stream_file(path: AnyPath, rel: str, regions: list[Region], want_hash: bool,
                progress: Progress | None = None, chunk: int = CHUNK,
                overlap: bool = False) -> FileOutcome:
    """Read `path` once, front to back, feeding each region its bytes (and the hash all).
    A file that cannot be read gets one UNREADABLE finding and no hash.
    With `overlap`, two buffers alternate: a helper thread runs the value checks (NaN/Inf) of
    one chunk while this thread reads the next chunk and runs its CRC32 and hash (readinto,
    zlib, hashlib and numpy all release the GIL). The helper runs the checks in file order."""
    res = FileOutcome(rel)
    error = None
    h = hashlib.sha256() if want_hash else None
    helper = None
    if overlap and any(r.counters for r in regions):
        from concurrent.futures import ThreadPoolExecutor

        helper = ThreadPoolExecutor(max_workers=1)
    nbuf = 2 if helper is not None else 1
    bufs = [memoryview(bytearray(chunk)) for _ in range(nbuf)]
    pending: list = [None] * nbuf  # the helper's job still reading each buffer
    label = rel or path.name
    turn = 0
    try:
        with open_stream(path) as fh:
            size = stat(path).st_size
            pos = 0

            def read_to(end: int, region: Region | None) -> None:
                nonlocal pos, turn
                if h is None and region is None:  # nothing wants these bytes: skip them
                    pos = fh.seek(end)
                    return
                while pos < end:
                    i = turn
                    if pending[i] is not None:  # the helper still checks this buffer's bytes
                        pending[i].result()
                        pending[i] = None
                    mv = bufs[i]
                    n = fh.readinto(mv[: min(chunk, end - pos)])
                    if not n:
                        if region is not None:
                            region.short = True
                        pos = end
                        fh.seek(end)
                        return
                    block = mv[:n]
                    if h is not None:
                        h.update(block)
                    if region is not None:
                        region.feed_crc(block)
                        if region.counters:
                            if helper is None:
                                region.feed_values(block)
                            else:
                                pending[i] = helper.submit(region.feed_values, block)
                                turn = (turn + 1) % nbuf
                    pos += n
                    res.nbytes += n
                    if progress:
                        progress(label, n)

            overlapping = []
            for reg in sorted(regions, key=lambda r: r.start):
                if reg.start < pos or reg.start > size:
                    overlapping.append(reg)
                    continue
                read_to(reg.start, None)
                read_to(reg.end, reg)
            if h is not None:
                read_to(size, None)
            for reg in overlapping:  # overlapping records (never torch's): read them again
                fh.seek(reg.start)
                pos = reg.start
                read_to(reg.end, reg)
                if reg.end > size:
                    reg.short = True
    except OSError as exc:
        error = exc.strerror or str(exc)
    finally:
        if helper is not None:
            for job in pending:  # the counts are complete only when every check has run
                if job is not None:
                    job.result()
            helper.shutdown()
    if error is not None:
        from .storage import failure_of

        failure = failure_of(path)  # a remote read: changed, timed out, over --max-bytes
        res.findings.append(failure[0].finding(rel, failure[1]) if failure else
                            Code.UNREADABLE.finding(rel, f"cannot read: {error}"))
    elif h is not None:
        res.sha256 = h.hexdigest()
    return res


def hash_file(path: AnyPath, progress: Progress | None = None) -> str | None:
    return stream_file(path, path.name, [], True, progress).sha256
