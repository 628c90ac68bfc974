"""Reading a torch.distributed.checkpoint directory without DCP's loader.

DCP unpickles `.metadata` with plain pickle.load and BytesIO items with weights_only=False.
Here `.metadata` is only walked symbolically (formats/dcp.py refuses any global that is not
one of DCP's metadata classes), tensor items are embedded torch.save zips loaded one at a
time with weights_only=True from a slice of their shard, and BytesIO items go through the
loader chain. A tensor saved in several chunks (FSDP / TP shards) is assembled from them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import Code
from ..formats.dcp import read_metadata
from ..pickles.scan import Glob, Obj, SymDict, SymList, scan_bytes
from .common import Options, fail
from .loading import load_pickle_bytes, load_tensor_item

TREE_NAME = "ckptdoctor.tree.json"
TREE_FORMAT = "ckptdoctor.dcp-tree/1"


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    relative_path: str = ""
    offset: int = -1
    length: int = -1


@dataclass
class TensorMeta:
    fqn: str
    dtype: Any
    shape: tuple[int, ...]
    chunks: list[Chunk] = field(default_factory=list)


@dataclass
class Item:
    relative_path: str
    offset: int
    length: int


def _state(obj: Any) -> dict[str, Any]:
    st = obj.state if isinstance(obj, Obj) else None
    if isinstance(st, SymDict):
        return {k: v for k, v in st if isinstance(k, str)}
    return {}


def _size(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, Obj) and isinstance(v.args, tuple) and v.args \
            and isinstance(v.args[0], tuple) and all(isinstance(d, int) for d in v.args[0]):
        return tuple(v.args[0])
    return None


def _dtype(props: Any) -> Any:
    import torch

    pstate = props.state if isinstance(props, Obj) else None
    glob = None
    if isinstance(pstate, tuple) and pstate and isinstance(pstate[0], Glob):
        glob = pstate[0]
    elif isinstance(pstate, SymDict):
        glob = _state(props).get("dtype")
    name = glob.match.rpartition(".")[2] if isinstance(glob, Glob) else ""
    dt = getattr(torch, name, None)
    return dt if isinstance(dt, torch.dtype) else None


def _plain(v: Any) -> Any:
    """A symbolic planner_data path element (str / int / tuple of them) as Python."""
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return v
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    raise ValueError(v)


@dataclass
class Segment:
    """One stored chunk's bytes: `numel` elements of the flattened tensor from `first`, at
    `offset` in `path`."""

    path: Path
    offset: int
    first: int
    numel: int


def dim0_tiling(meta: TensorMeta) -> list[Chunk] | str:
    """The non-empty chunks in row order when they tile dim 0 exactly, each whole in the other
    dimensions (FSDP / FSDP2 shard on dim 0; a replicated tensor is one whole chunk); else why
    not (a tensor-parallel shard on another dimension, a gap, an overlap)."""
    if not meta.shape:
        return meta.chunks[:1] if meta.chunks else "no chunk stored"
    if 0 in meta.shape:
        return []
    chunks = sorted((c for c in meta.chunks if all(c.sizes)), key=lambda c: c.offsets[0])
    row = 0
    for c in chunks:
        if any(c.offsets[1:]) or tuple(c.sizes[1:]) != tuple(meta.shape[1:]):
            return (f"{meta.shape} is sharded on a dimension other than 0 (chunk at "
                    f"{c.offsets}, sizes {c.sizes})")
        if c.offsets[0] != row:
            return f"saved chunks do not tile dim 0 (gap or overlap at row {row})"
        row += c.sizes[0]
    if row != meta.shape[0]:
        return f"saved chunks cover {row} of {meta.shape[0]} rows"
    return chunks


class DcpCheckpoint:
    def __init__(self, root: Path, opts: Options):
        self.root = Path(root)
        self.opts = opts
        meta_path = self.root / ".metadata"
        if not meta_path.is_file():
            raise fail(root, f"{root}: no .metadata (not a DCP checkpoint, or the save did not "
                             "finish: .metadata is written last)")
        info, md = read_metadata(meta_path, ".metadata")
        if md is None:
            bad = [f for f in info.findings if f.code == Code.DCP_METADATA.code] or info.findings
            raise fail(meta_path, bad[0].message if bad else ".metadata cannot be read safely",
                       hint=bad[0].hint if bad else "", extra=bad)
        outside = [f for f in info.findings if f.code == Code.DCP_PATH.code]
        if outside:  # a storage path that leaves the directory, or a symlink out of it
            raise fail(meta_path, outside[0].message, hint=outside[0].hint, extra=outside)
        scan = scan_bytes(meta_path.read_bytes(), ".metadata")
        top = _state(scan.root)
        self.tensors: dict[str, TensorMeta] = {}
        self.bytes_items: dict[str, Item] = {}
        self.planner_data: dict[str, tuple] | None = None
        sdm = top.get("state_dict_metadata")
        kinds: dict[str, str] = {}
        for fqn, entry in (sdm if isinstance(sdm, SymDict) else []):
            if not isinstance(fqn, str) or not isinstance(entry, Obj):
                continue
            if (entry.type_name or "").endswith("BytesStorageMetadata"):
                kinds[fqn] = "bytes"
                continue
            st = _state(entry)
            dtype, shape = _dtype(st.get("properties")), _size(st.get("size"))
            if dtype is None or shape is None:
                raise fail(meta_path, f"{fqn}: dtype or size unreadable in .metadata")
            chunks = []
            listed = st.get("chunks")
            for c in (listed if isinstance(listed, SymList) else []):
                cs = _state(c)
                off, size = _size(cs.get("offsets")), _size(cs.get("sizes"))
                if off is None or size is None or not len(off) == len(size) == len(shape):
                    raise fail(meta_path, f"{fqn}: chunk offsets/sizes unreadable")
                chunks.append(Chunk(off, size))
            self.tensors[fqn] = TensorMeta(fqn, dtype, shape, chunks)
            kinds[fqn] = "tensor"
        by_key: dict[tuple[Any, tuple[int, ...] | None], Item] = {}
        sd = top.get("storage_data")
        for index, sinfo in (sd if isinstance(sd, SymDict) else []):
            ist, s = _state(index), _state(sinfo)
            if s.get("transform_descriptors"):
                raise fail(meta_path, f"{ist.get('fqn')}: stored with DCP extensions "
                           f"({s.get('transform_descriptors')!r}); not supported")
            if not (isinstance(s.get("relative_path"), str) and isinstance(s.get("offset"), int)
                    and isinstance(s.get("length"), int)):
                raise fail(meta_path, f"{ist.get('fqn')}: storage entry unreadable")
            if "/" in s["relative_path"] or s["relative_path"].startswith(".."):
                raise fail(meta_path, f"storage path {s['relative_path']!r} leaves the directory")
            by_key[(ist.get("fqn"), _size(ist.get("offset")))] = Item(
                s["relative_path"], s["offset"], s["length"])
        for fqn, t in self.tensors.items():
            for c in t.chunks:
                item = by_key.get((fqn, c.offsets))
                if item is None:
                    raise fail(meta_path, f"{fqn}: chunk at {c.offsets} has no storage entry",
                               hint="a rank's shard is missing from the metadata")
                c.relative_path, c.offset, c.length = item.relative_path, item.offset, item.length
        for fqn, kind in kinds.items():
            if kind == "bytes":
                item = by_key.get((fqn, None))
                if item is None:
                    raise fail(meta_path, f"{fqn}: BytesIO item has no storage entry")
                self.bytes_items[fqn] = item
        pd = top.get("planner_data")
        if isinstance(pd, SymDict):
            try:
                self.planner_data = {k: _plain(v) for k, v in pd if isinstance(k, str)}
            except ValueError:
                self.planner_data = None
        sizes: dict[str, int] = {}
        for name in {c.relative_path for t in self.tensors.values() for c in t.chunks} | {
                i.relative_path for i in self.bytes_items.values()}:
            p = self.root / name
            if not p.is_file():
                raise fail(p, f"{name} named by .metadata is missing",
                           hint="a rank's shard was not written; use the previous checkpoint")
            sizes[name] = p.stat().st_size
        # every stored range inside its file, before anything is sized from .metadata
        ranges = [(f"{fqn}@{c.offsets}", c.relative_path, c.offset, c.length)
                  for fqn, t in self.tensors.items() for c in t.chunks]
        ranges += [(fqn, i.relative_path, i.offset, i.length)
                   for fqn, i in self.bytes_items.items()]
        for what, name, offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > sizes[name]:
                raise fail(self.root / name, f"{what}: stored at [{offset}, {offset + length}) "
                                             f"but {name} holds {sizes[name]} bytes",
                           hint="the shard is cut short or .metadata is damaged")
        self._fh: dict[str, Any] = {}
        self._segments: dict[str, list[Segment]] = {}

    def _file(self, name: str):
        fh = self._fh.get(name)
        if fh is None:
            fh = self._fh[name] = open(self.root / name, "rb")  # noqa: SIM115 - close()
        return fh

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()
        self._fh.clear()

    def segments(self, fqn: str) -> list[Segment]:
        """Where the tensor's flattened elements lie, in order: one Segment per stored chunk.
        Only for chunks that tile dim 0 (FSDP / FSDP2 / DDP saves; see `dim0_tiling`), whose
        row-order concatenation is the C-contiguous tensor. Each chunk's item is checked with
        torch's reader once (`data_range`)."""
        if fqn not in self._segments:
            meta = self.tensors[fqn]
            chunks = dim0_tiling(meta)
            if isinstance(chunks, str):
                raise fail(self.root / ".metadata", f"{fqn}: {chunks}")
            per_row = math.prod(meta.shape[1:]) if meta.shape else 1
            out = []
            for c in chunks:
                path, offset, nbytes = self.data_range(meta, c)
                first = c.offsets[0] * per_row if meta.shape else 0
                out.append(Segment(path, offset, first, nbytes // meta.dtype.itemsize))
            self._segments[fqn] = out
        return self._segments[fqn]

    def read_range(self, fqn: str, a: int, b: int) -> Any:
        """The flattened tensor's elements [a, b), read from the stored bytes (`segments`):
        never the whole tensor, so the diff can stream a chunked tensor in pieces."""
        import torch

        meta = self.tensors[fqn]
        size = meta.dtype.itemsize
        if b <= a:
            return torch.empty(0, dtype=meta.dtype)
        buf = bytearray((b - a) * size)
        view, pos = memoryview(buf), 0
        for path, offset, n in self.byte_ranges(fqn, a, b):
            fh = self._file(path.name)
            fh.seek(offset)
            if fh.readinto(view[pos:pos + n]) != n:
                raise fail(path, f"{fqn}: stored item cut short")
            pos += n
        return torch.frombuffer(buf, dtype=meta.dtype)

    def byte_ranges(self, fqn: str, a: int, b: int):
        """(shard, absolute offset, nbytes) holding the flattened elements [a, b), in order."""
        size = self.tensors[fqn].dtype.itemsize
        for seg in self.segments(fqn):
            lo, hi = max(a, seg.first), min(b, seg.first + seg.numel)
            if lo < hi:
                yield seg.path, seg.offset + (lo - seg.first) * size, (hi - lo) * size

    def load_tensor(self, fqn: str):
        """The whole tensor: its single chunk, or its chunks copied into place."""
        import torch

        meta = self.tensors[fqn]
        numel = 1
        for d in meta.shape:
            numel *= d
        whole = [c for c in meta.chunks if c.sizes == meta.shape and not any(c.offsets)]
        if whole:
            return self._chunk(meta, whole[0])
        out = torch.empty(meta.shape, dtype=meta.dtype)
        covered = 0
        for c in meta.chunks:
            part = self._chunk(meta, c)
            index = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes, strict=True))
            out[index] = part
            n = 1
            for s in c.sizes:
                n *= s
            covered += n
            del part
        if covered != numel:
            raise fail(self.root, f"{fqn}: chunks cover {covered} of {numel} elements",
                       hint="a rank's shard is missing; use the previous checkpoint")
        return out

    def _chunk(self, meta: TensorMeta, c: Chunk):
        rel = f"{c.relative_path}@{c.offset}"
        t = load_tensor_item(self._file(c.relative_path), c.offset, c.length, rel)
        if t.dtype != meta.dtype or tuple(t.shape) != tuple(c.sizes):
            raise fail(self.root / c.relative_path, f"{meta.fqn}: item holds {t.dtype} "
                       f"{tuple(t.shape)}, .metadata says {meta.dtype} {c.sizes}")
        return t

    def raw_range(self, fqn: str) -> tuple[Path, int, int] | None:
        """(shard, absolute offset, nbytes) of a single-chunk tensor's bytes (`data_range`);
        None when the tensor is chunked. Lets verification compare bytes without loading."""
        meta = self.tensors[fqn]
        whole = [c for c in meta.chunks if c.sizes == meta.shape and not any(c.offsets)]
        if len(meta.chunks) != 1 or not whole:
            return None
        return self.data_range(meta, whole[0])

    def data_range(self, meta: TensorMeta, c: Chunk) -> tuple[Path, int, int]:
        """(shard, absolute offset, nbytes) of one chunk's bytes inside its embedded zip, after
        checking with torch's own reader (skip_data: metadata only) that the item holds
        exactly the chunk's dtype and sizes, C-contiguous, from storage offset 0."""
        import zipfile

        import torch

        from .loading import _slice_class

        rel = f"{c.relative_path}@{c.offset}"
        fh = self._file(c.relative_path)
        Slice = _slice_class()
        try:
            with torch.serialization.skip_data():
                t = torch.load(Slice(fh, c.offset, c.length), map_location="cpu",
                               weights_only=True)
            with zipfile.ZipFile(Slice(fh, c.offset, c.length)) as zf:
                records = [i for i in zf.infolist() if "/data/" in i.filename
                           and i.filename.rsplit("/", 2)[-2] == "data"]
        except Exception as exc:  # torch / zipfile raise many types
            raise fail(rel, f"{meta.fqn}: item does not load: {type(exc).__name__}: {exc}") \
                from None
        if not isinstance(t, torch.Tensor) or t.dtype != meta.dtype \
                or tuple(t.shape) != tuple(c.sizes) or not t.is_contiguous() \
                or t.storage_offset() != 0 or len(records) > 1 \
                or (records and (records[0].file_size != t.numel() * t.element_size()
                                 or records[0].compress_type != 0)):
            raise fail(rel, f"{meta.fqn}: item does not hold a plain {meta.dtype} {c.sizes} "
                            "tensor")
        nbytes = t.numel() * t.element_size()
        if not records:  # an empty chunk: torch writes no storage record
            if nbytes:
                raise fail(rel, f"{meta.fqn}: item has no data record")
            return self.root / c.relative_path, c.offset, 0
        fh.seek(c.offset + records[0].header_offset + 26)
        n, m = (int.from_bytes(fh.read(2), "little") for _ in range(2))
        return self.root / c.relative_path, c.offset + records[0].header_offset + 30 + n + m, nbytes

    def load_bytes(self, fqn: str) -> Any:
        item = self.bytes_items[fqn]
        fh = self._file(item.relative_path)
        fh.seek(item.offset)
        data = fh.read(item.length)
        if len(data) != item.length:
            raise fail(self.root / item.relative_path, f"{fqn}: item is cut short")
        return load_pickle_bytes(data, f"{item.relative_path}@{item.offset} ({fqn})", self.opts)

    def tree(self, values: dict[str, Any]) -> tuple[Any, str]:
        """The original nesting, filled with `values` (fqn -> value): from ckptdoctor's tree
        sidecar when it matches, else from DCP's planner_data the way DCP unflattens it, else
        flat. Returns (tree, how)."""
        side = self.root / TREE_NAME
        if side.is_file():
            try:
                doc = json.loads(side.read_text("utf-8"))
                if doc.get("format") == TREE_FORMAT and set(doc.get("fqns", [])) == set(values):
                    from .codec import SKIP, decode

                    return decode(doc["tree"], lambda d: values[d["fqn"]]
                                  if d.get("$t") == "leaf" else SKIP), "tree"
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if self.planner_data and set(self.planner_data) == set(values):
            out: dict = {}
            for fqn, path in self.planner_data.items():
                _set_element(out, path, values[fqn])
            return out, "planner_data"
        return dict(values), "flat"


def _set_element(root: dict, path: tuple, value: Any) -> None:
    """DCP's set_element: a str key makes a dict level, an int key a list level."""
    cur: Any = root
    for i in range(1, len(path)):
        prev, key = path[i - 1], path[i]
        default: Any = {} if isinstance(key, str) else []
        if isinstance(cur, dict):
            cur = cur.setdefault(prev, default)
        else:
            while len(cur) <= prev:
                cur.append(None)
            if cur[prev] is None:
                cur[prev] = default
            cur = cur[prev]
    key = path[-1]
    if isinstance(key, int) and isinstance(cur, list):
        while len(cur) <= key:
            cur.append(None)
        cur[key] = value
    else:
        cur[key] = value
