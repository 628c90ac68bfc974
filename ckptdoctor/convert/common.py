"""What every conversion shares: options, the result, errors, lazily loaded tensors, the
byte streaming that keeps memory bounded, and the staging of output files and directories.

Memory model. A source tensor is never materialised with the others, and its bytes go to
the output in CHUNK-sized pieces. Where the source stores a tensor's exact bytes at a known
place (safetensors, DCP items) they are read with pread into one reused buffer
(`TensorEntry.raw`). torch zips are opened with mmap through the loader chain; pages of a file
mapping that have been read stay in the process's RSS (file-backed, but kept mapped until
memory pressure), so after each chunk they are dropped with madvise(MADV_DONTNEED). That is
safe only for clean private file mappings: `MappedFiles` says which tensors live in one, and
nothing else is ever released."""

from __future__ import annotations

import ctypes
import enum
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import Code
from ..errors import ConvertError
from ..model import Finding, Severity

CHUNK = 16 << 20  # bytes per read / convert / write / compare step
Progress = Callable[[str, int], None]
DTYPE_CHOICES = ("keep", "bf16", "fp16", "fp32")




class ConvertTarget(str, enum.Enum):
    """`convert --to`: the format written."""

    SAFETENSORS = "safetensors"
    TORCH = "torch"
    DCP = "dcp"
    SAFE = "safe"  # tensors + a JSON sidecar for everything else, lossless

    def __str__(self) -> str:
        return self.value


TARGETS = tuple(ConvertTarget)


def fail(path: Any, message: str, hint: str = "", extra: list[Finding] | tuple = (),
         **detail: Any) -> ConvertError:
    return ConvertError(Code.CONVERT_FAILED.finding(str(path), message, hint, **detail), extra)


@dataclass
class Options:
    to: ConvertTarget | None  # None: the checkpoint is only read (diff)
    max_shard_size: int | None = None
    dtype: str = "keep"
    verify: bool = True
    drop_non_tensors: bool = False
    strip_prefix: str | None = None
    allow: tuple[str, ...] = ()
    trust: bool = False
    progress: Progress | None = None
    overwrite: bool = False
    add_prefix: str | None = None  # prepended to every key after --strip-prefix
    nest: str | None = None  # DCP output: the state dict goes under this top-level key
    params: Path | None = None  # DCP output: written as params.json (Lingua's config)
    weights_only: bool = False  # export the weights, leave (possibly broken) training state

    def tick(self, label: str, nbytes: int) -> None:
        if self.progress is not None and nbytes:
            self.progress(label, nbytes)


@dataclass
class ConvertResult:
    """What a conversion wrote. `files` are absolute paths of the committed outputs."""

    src: str
    dst: str
    source_format: str
    to: ConvertTarget
    converter: str = ""
    files: list[str] = field(default_factory=list)
    tensors: int = 0
    bytes: int = 0  # tensor bytes written (after --dtype)
    non_tensors: list[str] = field(default_factory=list)  # non-tensor entries met (keys)
    non_tensor_sidecar: str | None = None  # where they were kept (None: dropped / none)
    aliases: dict[str, str] = field(default_factory=dict)  # removed alias -> kept tensor
    skipped: list[str] = field(default_factory=list)  # entries left out (prefix, training state)
    copied: list[str] = field(default_factory=list)  # sidecar files carried along
    findings: list[Finding] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0
    equivalence: Any = None  # equivalence.Equivalence when the resume-equivalence diff ran

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src, "dst": self.dst, "source_format": self.source_format,
            "to": self.to, "converter": self.converter, "files": self.files,
            "tensors": self.tensors, "bytes": self.bytes, "non_tensors": self.non_tensors,
            "non_tensor_sidecar": self.non_tensor_sidecar, "aliases": self.aliases,
            "skipped": self.skipped, "copied": self.copied, "verified": self.verified,
            "resume_equivalent": None if self.equivalence is None else self.equivalence.ok,
            "seconds": round(self.seconds, 3),
            "findings": [f.to_json() for f in self.findings],
        }


# --- sizes and dtypes -------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*$", re.IGNORECASE)


def parse_size(value: int | str | None) -> int | None:
    """'5GB' -> 5*10**9, '5GiB' -> 5*2**30, '30KB' -> 30000 (transformers' convention)."""
    if value is None or isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"bad size {value!r}: use digits and a unit, e.g. 5GB, 500MB, 2GiB")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = " KMGT".index(unit) if unit else 0
    n = int(number * ((1024 if binary else 1000) ** power))
    if n <= 0:
        raise ValueError(f"bad size {value!r}: must be positive")
    return n


def target_dtype(src_dtype: Any, choice: str) -> Any:
    """The output dtype for a source tensor: floating point tensors follow --dtype, everything
    else (ints, bools, float8, complex) keeps its dtype."""
    import torch

    if choice == "keep":
        return src_dtype
    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
    if src_dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return want
    return src_dtype


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


# --- mapped files and page release ------------------------------------------------------------
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MappedFiles:
    """Which tensors live in a clean, private file mapping of one of our sources, so that
    their pages can be dropped after use.

    Soundness: `add(path)` re-reads /proc/self/maps right after the file was mapped, and
    `contains()` is asked right away about tensors that already exist then. A tensor found
    inside a private mapping of the file is file-backed for as long as it lives (it keeps
    its mapping alive), so `release()` on its own bytes while we hold it only drops clean
    pages the kernel re-reads from the file on the next access. Anonymous memory (a tensor
    built while unpickling, a converted copy) is never passed to `release()`."""

    def __init__(self) -> None:
        self.inodes: set[tuple[int, int]] = set()
        self.ranges: list[tuple[int, int]] = []
        self._libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.madvise.restype = ctypes.c_int
                self._libc = libc
            except (OSError, AttributeError):
                self._libc = None

    def add(self, path: Path) -> None:
        """Call right after mapping `path`: records where the kernel mapped it."""
        if self._libc is None:
            return
        st = os.stat(path)
        self.inodes.add((st.st_dev, st.st_ino))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the live mappings. `tensor_is_mapped` is only sound for tensors that
        already existed when this ran (a range unmapped later may be reused)."""
        if self._libc is None or not self.inodes:
            self.ranges = []
            return
        ranges = []
        try:
            with open("/proc/self/maps") as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) < 6 or "p" not in parts[1]:
                        continue  # only private mappings (MAP_SHARED pages would be written back)
                    major, minor = (int(x, 16) for x in parts[3].split(":"))
                    inode = int(parts[4])
                    if inode and (os.makedev(major, minor), inode) in self.inodes:
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        ranges.append((lo, hi))
        except OSError:
            ranges = []
        self.ranges = ranges

    @property
    def usable(self) -> bool:
        return self._libc is not None

    def contains(self, ptr: int, nbytes: int) -> bool:
        if self._libc is None or nbytes <= 0:
            return False
        return any(a <= ptr and ptr + nbytes <= b for a, b in self.ranges)

    def tensor_is_mapped(self, t: Any) -> bool:
        try:
            return self.contains(t.data_ptr(), t.numel() * t.element_size())
        except (RuntimeError, AttributeError):
            return False

    def release(self, ptr: int, nbytes: int) -> None:
        """Drop the whole pages of [ptr, ptr+nbytes): only for bytes of a mapped tensor."""
        if self._libc is None or nbytes <= 0:
            return
        lo = -(-ptr // _PAGE) * _PAGE
        hi = (ptr + nbytes) // _PAGE * _PAGE
        if hi > lo:
            self._libc.madvise(lo, hi - lo, _MADV_DONTNEED)


MAPPED = MappedFiles()


class Writeback:
    """Starts the kernel's writeback of what has been written so far (Linux
    sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait), every `step` bytes. The
    fsync before the rename then finds most data on disk already: writing the disk overlaps
    with producing the rest and with verification, instead of following them."""

    _fn = None
    _tried = False

    def __init__(self, fh: Any, step: int = 64 << 20):
        self.fh = fh
        self.step = step
        self.done = 0
        if not Writeback._tried:
            Writeback._tried = True
            if sys.platform.startswith("linux"):
                try:
                    fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                    fn.restype = ctypes.c_int
                    Writeback._fn = fn
                except (OSError, AttributeError):
                    Writeback._fn = None

    @classmethod
    def start(cls, path: Path) -> None:
        """Start writing back a whole file someone else wrote (DCP's shards)."""
        with open(path, "rb") as fh:
            wb = cls(fh, step=0)
            if Writeback._fn is not None:
                Writeback._fn(fh.fileno(), 0, 0, 2)  # nbytes 0: to the end of the file
            del wb

    def kick(self, pos: int) -> None:
        if Writeback._fn is None or pos - self.done < self.step:
            return
        self.fh.flush()
        Writeback._fn(self.fh.fileno(), self.done, pos - self.done, 2)  # SYNC_FILE_RANGE_WRITE
        self.done = pos


# --- lazily loaded tensors --------------------------------------------------------------------
@dataclass(eq=False)
class TensorEntry:
    """One tensor of a source, not loaded yet. `load()` returns it (for mmap sources, a
    tensor whose pages are read on access). Several entries may load the same tensor."""

    name: str
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], Any]
    origin: str = ""  # source file, for messages
    mapped: bool = False  # load() returns a tensor in a private file mapping (see MappedFiles)
    # (file, offset, nbytes) holding exactly this tensor's C-contiguous bytes, when the source
    # stores them that way (safetensors, DCP items): read with pread, nothing is allocated
    raw: Callable[[], tuple[Path, int, int] | None] | None = None
    # read(a, b): the flattened tensor's elements [a, b), when the source can assemble a range
    # without the whole tensor (ZeRO partitions): the diff then streams the pair in pieces
    read: Callable[[int, int], Any] | None = None

    @property
    def numel(self) -> int:
        n = math.prod(self.shape)
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def tensor_entry(name: str, t: Any, origin: str = "") -> TensorEntry:
    """An entry for an already loaded tensor. Call right after the load (see MappedFiles)."""
    return TensorEntry(name, t.dtype, tuple(t.shape), lambda: t, origin,
                       MAPPED.tensor_is_mapped(t))


def byte_chunks(t: Any, out_dtype: Any = None, chunk: int = CHUNK,
                mapped: bool = False) -> Iterator[Any]:
    """The bytes of tensor `t` (as `out_dtype`), C-contiguous, as numpy uint8 arrays of at most
    `chunk` bytes. With `mapped` (t lives in a private file mapping), its pages are dropped
    after each chunk."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    out_dtype = out_dtype or t.dtype
    if t.numel() == 0:
        return
    if not t.is_contiguous():
        t = t.contiguous()  # one tensor-sized copy (views, transposes)
        mapped = False
    flat = t.reshape(-1)
    if out_dtype == t.dtype:
        raw = flat.view(torch.uint8)
        arr = raw.numpy()
        ptr = raw.data_ptr()
        for i in range(0, arr.shape[0], chunk):
            yield arr[i:i + chunk]
            if mapped:
                MAPPED.release(ptr + i, min(chunk, arr.shape[0] - i))
        return
    step = max(1, chunk // max(t.element_size(), out_dtype.itemsize))
    ptr, size = flat.data_ptr(), t.element_size()
    for i in range(0, flat.shape[0], step):
        part = flat[i:i + step].to(out_dtype)
        yield part.view(torch.uint8).numpy()
        if mapped:
            MAPPED.release(ptr + i * size, part.shape[0] * size)


def entry_chunks(entry: TensorEntry, out_dtype: Any = None, chunk: int = CHUNK) -> Iterator[Any]:
    """The bytes of an entry's tensor as `out_dtype`, in chunks: straight from the source file
    when it stores exactly these bytes (entry.raw), else from the loaded tensor. A chunk is
    valid until the next one is asked for."""
    out_dtype = out_dtype or entry.dtype
    where = entry.raw() if entry.raw is not None and out_dtype == entry.dtype else None
    if where is not None:
        path, offset, nbytes = where
        if nbytes != entry.nbytes:
            raise fail(path, f"{entry.name}: {nbytes} stored bytes, {entry.dtype} "
                             f"{entry.shape} needs {entry.nbytes}")
        with FileReader(path) as reader:
            for i in range(0, nbytes, chunk):
                part = reader.read(offset + i, min(chunk, nbytes - i))
                if part.shape[0] == 0:
                    return
                yield part
        return
    t = entry.load()
    if tuple(t.shape) != tuple(entry.shape):
        raise fail(entry.origin, f"{entry.name}: source shape {tuple(t.shape)} differs from "
                                 f"its metadata {entry.shape}")
    yield from byte_chunks(t, out_dtype, chunk, entry.mapped)


def release_tensor(t: Any, mapped: bool) -> None:
    """Drop a mapped tensor's pages (nothing for anonymous memory)."""
    if mapped and t.numel():
        MAPPED.release(t.data_ptr(), t.numel() * t.element_size())


def compare_bytes(expected: Iterator[Any], read: Callable[[int, int], Any], start: int,
                  nbytes: int) -> int | None:
    """Compare expected chunks with the file bytes [start, start+nbytes) read by `read(off, n)`.
    Returns the first differing byte offset (relative), or None when identical."""
    import numpy as np

    pos = 0
    for exp in expected:
        n = exp.shape[0]
        got = read(start + pos, n)
        if got.shape[0] != n:
            return pos + got.shape[0]
        if not _same_bytes(exp, got):
            diff = np.nonzero(exp != got)[0]
            return pos + int(diff[0]) if diff.size else pos
        pos += n
    return None if pos == nbytes else pos


def _same_bytes(a: Any, b: Any) -> bool:
    """Equal uint8 arrays, compared 8 bytes at a time (2-3x numpy's byte-wise compare)."""
    import numpy as np

    n8 = a.shape[0] // 8 * 8
    if n8 and not np.array_equal(a[:n8].view(np.uint64), b[:n8].view(np.uint64)):
        return False
    return bool(np.array_equal(a[n8:], b[n8:]))


class MappedReader:
    """`read(off, n)` over a (possibly file-mapped) tensor's bytes; with `mapped`, the pages
    of the previous read are dropped when the next one is asked for."""

    def __init__(self, t: Any, mapped: bool):
        import torch

        self.flat = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else None
        self.ptr = t.data_ptr() if t.numel() else 0
        self.mapped = mapped
        self.prev: tuple[int, int] | None = None

    def read(self, off: int, n: int):
        self.done()
        self.prev = (off, n)
        if self.flat is None:  # an empty tensor: no bytes
            return b""
        return self.flat[off:off + n]

    def done(self) -> None:
        if self.prev is not None and self.mapped:
            MAPPED.release(self.ptr + self.prev[0], self.prev[1])
        self.prev = None


class FileReader:
    """pread-style reads into one reused buffer (plain reads: page cache, not our RSS)."""

    def __init__(self, path: Path):
        self.fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.buf = bytearray()

    def read(self, offset: int, n: int):
        import numpy as np

        if len(self.buf) < n:
            self.buf = bytearray(n)
        view = memoryview(self.buf)[:n]
        self.fh.seek(offset)
        got = 0
        while got < n:
            k = self.fh.readinto(view[got:])
            if not k:
                break
            got += k
        return np.frombuffer(self.buf, dtype=np.uint8, count=got)

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def holds(value: Any, match: Callable[[Any], bool], depth: int = 0, limit: int = 200) -> bool:
    """True when `value`, or anything nested in its dicts, lists, tuples and sets, matches."""
    if match(value):
        return True
    if depth > limit:
        return False
    if isinstance(value, Mapping):
        return any(holds(x, match, depth + 1, limit) for x in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds(x, match, depth + 1, limit) for x in value)
    return False


def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
