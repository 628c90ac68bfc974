"""safetensors: a streaming writer, a lazily mapped reader, sharding and verification.

Why not `safetensors.torch.save_file`: it takes a dict of materialised tensors and builds the
whole file in memory, so converting a checkpoint costs its full size in RSS (plus a copy of
every tied tensor it refuses to share). The format does not need that: the header is a
function of names, dtypes and shapes only. So the header is computed from metadata first,
written, and then each tensor's bytes are streamed in the header's order, one tensor and one
CHUNK at a time, from its (mmap-backed or lazily loaded) source."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import Code
from ..formats.safetensors_file import check_entries, read_header
from ..model import Severity
from .common import (
    CHUNK,
    MAPPED,
    ConvertError,
    FileReader,
    Options,
    TensorEntry,
    Writeback,
    compare_bytes,
    entry_chunks,
    fail,
)

INDEX_NAME = "model.safetensors.index.json"


def st_dtype(dtype: Any) -> str:
    import torch

    table = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32",
        torch.uint64: "U64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
        torch.complex64: "C64",
    }
    if hasattr(torch, "float8_e8m0fnu"):
        table[torch.float8_e8m0fnu] = "F8_E8M0"
    if dtype not in table:
        raise KeyError(dtype)
    return table[dtype]


def torch_dtype(code: str) -> Any:
    import torch

    from ..formats.safetensors_file import TORCH_NAMES

    name = TORCH_NAMES.get(code)
    if name is None or not hasattr(torch, name):
        raise KeyError(code)
    return getattr(torch, name)


@dataclass
class StItem:
    """One tensor to write: its name in the file, the source, the output dtype."""

    name: str
    entry: TensorEntry
    dtype: Any

    @property
    def nbytes(self) -> int:
        return self.entry.numel * self.dtype.itemsize


@dataclass
class StPlan:
    items: list[StItem]
    metadata: dict[str, str]
    header: bytes = b""
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + len(self.header)

    @property
    def size(self) -> int:
        return self.data_start + sum(i.nbytes for i in self.items)


def plan(items: list[StItem], metadata: dict[str, str]) -> StPlan:
    """Header and offsets. Tensors are ordered as safetensors itself orders them (larger
    element size first, then by name) so every tensor's data is aligned to its element size
    in a file whose header is padded to 8 bytes: readers can map it without copying."""
    items = sorted(items, key=lambda i: (-i.dtype.itemsize, i.name))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offsets, pos = {}, 0
    for it in items:
        try:
            code = st_dtype(it.dtype)
        except KeyError:
            raise fail(it.entry.origin, f"{it.name}: dtype {it.dtype} has no safetensors "
                                        "equivalent", hint="use --to safe or --dtype") from None
        offsets[it.name] = (pos, pos + it.nbytes)
        header[it.name] = {"dtype": code, "shape": list(it.entry.shape),
                           "data_offsets": [pos, pos + it.nbytes]}
        pos += it.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return StPlan(items, dict(metadata), raw, offsets)


def write(path: Path, p: StPlan, opts: Options, hasher: Any = None, label: str = "write") -> int:
    """Stream the planned file to `path` (a new temp file). Returns tensor bytes written."""
    total = 0
    with open(path, "xb") as fh:
        wb = Writeback(fh)
        head = len(p.header).to_bytes(8, "little") + p.header
        fh.write(head)
        if hasher is not None:
            hasher.update(head)
        for it in p.items:
            n = 0
            for part in entry_chunks(it.entry, it.dtype, CHUNK):
                fh.write(part)
                if hasher is not None:
                    hasher.update(part)
                n += part.shape[0]
                opts.tick(label, part.shape[0])
                wb.kick(p.data_start + total + n)
            if n != it.nbytes:
                raise fail(it.entry.origin, f"{it.name}: wrote {n} bytes, expected {it.nbytes}")
            total += n
        fh.flush()  # fsync happens at commit, after verification (Staging / atomic.commit)
    if os.path.getsize(path) != p.size:
        raise fail(path, f"{path.name}: size {os.path.getsize(path)} != planned {p.size}")
    return total


def verify(path: Path, p: StPlan, opts: Options, rel: str, label: str = "verify") -> None:
    """Re-read the written file: header entries must be exactly the plan and every tensor's
    bytes identical to its source (converted to the output dtype), one chunk at a time."""
    size = os.path.getsize(path)
    header, start, info = read_header(path, rel, size)
    if header is None:
        raise _mismatch(rel, "header does not parse: "
                        + "; ".join(f.message for f in info.findings))
    check_entries(header, start, info, rel)
    errors = [f for f in info.findings if f.severity is Severity.ERROR]
    if errors:
        raise _mismatch(rel, errors[0].message)
    meta = header.get("__metadata__") or {}
    if meta != p.metadata:
        raise _mismatch(rel, "__metadata__ differs from what was written")
    names = [k for k in header if k != "__metadata__"]
    if sorted(names) != sorted(i.name for i in p.items):
        raise _mismatch(rel, "tensor names differ from the source")
    with FileReader(path) as reader:
        for it in p.items:
            e = header[it.name]
            begin, end = e["data_offsets"]
            if e["dtype"] != st_dtype(it.dtype) or tuple(e["shape"]) != tuple(it.entry.shape):
                raise _mismatch(rel, f"{it.name}: dtype/shape differ from the source")
            bad = compare_bytes(entry_chunks(it.entry, it.dtype, CHUNK), reader.read,
                                start + begin, end - begin)
            if bad is not None:
                raise _mismatch(rel, f"{it.name}: byte {bad} differs from the source")
            opts.tick(label, end - begin)


def _mismatch(rel: str, message: str) -> ConvertError:
    return ConvertError(Code.CONVERT_VERIFY.finding(
        rel, f"verification failed: {message}",
        hint="the output was removed; re-run, and report it if it happens again"))


# --- sharding ---------------------------------------------------------------------------------
def shard(items: list[StItem], max_size: int | None) -> list[list[StItem]]:
    """Greedy in source order, like transformers' split_torch_state_dict_into_shards: a new
    shard starts when the next tensor would overflow it; a tensor bigger than the limit gets a
    shard of its own."""
    if not max_size:
        return [items]
    shards: list[list[StItem]] = []
    cur: list[StItem] = []
    size = 0
    for it in items:
        if cur and size + it.nbytes > max_size:
            shards.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += it.nbytes
    if cur or not shards:
        shards.append(cur)
    return shards


def shard_names(base: str, n: int) -> list[str]:
    if n == 1:
        return [f"{base}.safetensors"]
    return [f"{base}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def index_doc(shards: list[list[StItem]], names: list[str]) -> dict[str, Any]:
    weight_map = {it.name: fname for fname, items in zip(names, shards, strict=True)
                  for it in items}
    total = sum(it.nbytes for items in shards for it in items)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


# --- reading ----------------------------------------------------------------------------------
class SafetensorsFile:
    """A safetensors file whose tensors load lazily from one private file mapping."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        header, start, info = read_header(self.path, str(self.path), size)
        if header is None:
            raise fail(path, f"{path}: not a readable safetensors file: "
                       + "; ".join(f.message for f in info.findings))
        check_entries(header, start, info, str(path))
        errors = [f for f in info.findings if f.severity is Severity.ERROR]
        if errors:
            raise fail(path, f"{path}: {errors[0].message}", extra=errors)
        self.size = size
        self.start = start
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        self.header = {k: v for k, v in header.items() if k != "__metadata__"}
        self._storage = None

    def _map(self):
        import torch

        if self._storage is None:
            # (MAP_PRIVATE, read on access: entries are `mapped`, their pages dropped after use)
            self._storage = torch.UntypedStorage.from_file(str(self.path), False, self.size)
        return self._storage

    def names(self) -> list[str]:
        return list(self.header)

    def entry(self, name: str) -> TensorEntry:
        e = self.header[name]
        try:
            dtype = torch_dtype(e["dtype"])
        except KeyError:
            raise fail(self.path, f"{name}: safetensors dtype {e['dtype']} unsupported by this "
                                  "torch") from None
        shape = tuple(e["shape"])
        begin, end = e["data_offsets"]
        return TensorEntry(name, dtype, shape, lambda: self._load(dtype, shape, begin, end),
                           str(self.path), mapped=MAPPED.usable,
                           raw=lambda: (self.path, self.start + begin, end - begin))

    def _load(self, dtype: Any, shape: tuple[int, ...], begin: int, end: int):
        import torch

        if end == begin:
            return torch.empty(shape, dtype=dtype)
        sub = self._map()[self.start + begin:self.start + end]
        t = torch.empty(0, dtype=torch.uint8).set_(sub, 0, (end - begin,), (1,))
        return t.view(dtype).view(shape)

    def close(self) -> None:
        self._storage = None


def sha256_file(path: Path, tick: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(8 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
