"""torch.distributed.checkpoint: `.metadata` (a protocol-4 pickle of DCP's dataclasses) and
`__<rank>_<n>.distcp` shards (each item a torch.save zip written back to back).

DCP itself reads `.metadata` with plain `pickle.load`. Here it is only ever walked by the
symbolic scanner: its globals must all be DCP's own metadata classes, and the values are read
off the symbolic tree, so nothing in the file is imported or called."""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import Code
from ..model import FileInfo, TensorInfo
from ..pickles.scan import DTYPE_SIZES, Glob, Obj, SymDict, scan_bytes, scan_stream
from .base import FileSlice, Probe, add_global_findings, merge_scans
from .torch_zip import ZIP_MAGIC, scan_zip

MAX_METADATA = 1 << 30


def _is_dcp_global(name: str) -> bool:
    """A global DCP metadata may hold: one that passes the one gate, policy.vet (torch's
    defaults and exact reviewed data names: DCP's metadata classes, torch dtypes, Size,
    pathlib.PosixPath...). Never a module prefix."""
    from ..pickles.policy import vet

    return vet(name).allowed


@dataclass
class StorageEntry:
    fqn: str
    relative_path: str
    offset: int
    length: int


@dataclass
class DcpMetadata:
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    bytes_items: list[str] = field(default_factory=list)
    storage: list[StorageEntry] = field(default_factory=list)
    version: str | None = None


def _state(obj: Any) -> dict[str, Any]:
    st = obj.state if isinstance(obj, Obj) else None
    return dict((k, v) for k, v in st if isinstance(k, str)) if isinstance(st, SymDict) else {}


def _size(v: Any) -> tuple[int, ...]:
    if isinstance(v, Obj) and v.args and isinstance(v.args, tuple) and isinstance(v.args[0], tuple):
        return tuple(int(d) for d in v.args[0] if isinstance(d, int))
    return ()


def metadata_from_root(root: Any) -> DcpMetadata:
    """Read DCP's Metadata off the symbolic tree (no unpickling)."""
    md = DcpMetadata()
    top = _state(root)
    md.version = top.get("version") if isinstance(top.get("version"), str) else None
    sdm = top.get("state_dict_metadata")
    for fqn, entry in (sdm if isinstance(sdm, SymDict) else []):
        if not isinstance(fqn, str) or not isinstance(entry, Obj):
            continue
        if (entry.type_name or "").endswith("BytesStorageMetadata"):
            md.bytes_items.append(fqn)
            continue
        st = _state(entry)
        props = st.get("properties")
        dtype = "unknown"
        pstate = props.state if isinstance(props, Obj) else None
        if isinstance(pstate, tuple) and pstate and isinstance(pstate[0], Glob):
            dtype = pstate[0].match.rpartition(".")[2]
        elif isinstance(pstate, SymDict):
            d = dict((k, v) for k, v in pstate if isinstance(k, str)).get("dtype")
            dtype = d.match.rpartition(".")[2] if isinstance(d, Glob) else dtype
        shape = _size(st.get("size"))
        n = math.prod(shape)
        md.tensors[fqn] = TensorInfo(fqn, dtype, shape, n * DTYPE_SIZES.get(dtype, 1))
    sd = top.get("storage_data")
    for index, sinfo in (sd if isinstance(sd, SymDict) else []):
        fqn = _state(index).get("fqn")
        s = _state(sinfo)
        if isinstance(s.get("relative_path"), str) and isinstance(s.get("offset"), int) \
                and isinstance(s.get("length"), int):
            md.storage.append(StorageEntry(str(fqn), s["relative_path"], s["offset"], s["length"]))
    return md


def read_metadata(path: Path, rel: str) -> tuple[FileInfo, DcpMetadata | None]:
    size = path.stat().st_size
    info = FileInfo(rel, "dcp-metadata", size)
    if size > MAX_METADATA:
        info.findings.append(Code.PICKLE_LIMIT.finding(rel, f".metadata is {size} bytes"))
        return info, None
    scan = scan_bytes(path.read_bytes(), rel)
    merge_scans(info, [scan], rel)
    info.weights_only = None  # DCP never torch.loads this file; the verdict does not apply
    info.findings = [f for f in info.findings if f.code not in (
        Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code, Code.PICKLE_PROTOCOL.code)]
    foreign = sorted({g.name for g in scan.globals if not _is_dcp_global(g.name)})
    if foreign or not scan.complete:
        info.findings.append(Code.DCP_METADATA.finding(
            rel, "DCP .metadata holds globals that are not DCP metadata classes: "
                 + ", ".join(foreign) if foreign else "DCP .metadata is truncated or malformed",
            hint="torch.distributed.checkpoint unpickles this file with plain pickle.load: "
                 "do not load it"))
        return info, None
    md = metadata_from_root(scan.root)
    info.tensors = list(md.tensors.values())
    info.meta.update(version=md.version, tensors=len(md.tensors), bytes_items=len(md.bytes_items),
                     storage_entries=len(md.storage))
    return info, md


class DcpMetadataFormat:
    name = "dcp-metadata"

    def sniff(self, probe: Probe) -> bool:
        n = probe.path.name
        return (n == ".metadata" or (n.startswith("__") and n.endswith(".metadata"))) \
            and probe.head[:1] == b"\x80"

    def read(self, probe: Probe, rel: str) -> FileInfo:
        return read_metadata(probe.path, rel)[0]


_EOCD = b"PK\x05\x06"
MAX_ITEMS = 1_000_000
_PER_FILE_CODES = (Code.DANGEROUS_GLOBAL.code, Code.UNKNOWN_GLOBAL.code,
                   Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code)


def item_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each item in a .distcp shard.

    The sibling .metadata says where each item is (metadata only, no data read). Torch's zip
    writer puts sizes in data descriptors, not local headers, so without .metadata the shard is
    read once in chunks looking for each zip's end-of-central-directory record."""
    meta = path.parent / ".metadata"
    if meta.is_file():
        _, md = read_metadata(meta, ".metadata")
        if md is not None:
            return sorted({(e.offset, e.length) for e in md.storage
                           if e.relative_path == path.name})
    spans, start, base, tail = [], 0, 0, b""
    with open(path, "rb") as fh:
        while len(spans) < MAX_ITEMS:
            block = fh.read(8 << 20)
            if not block:
                break
            buf = tail + block
            i = buf.find(_EOCD)
            while i != -1 and i + 22 <= len(buf):
                end = base - len(tail) + i + 22 + int.from_bytes(buf[i + 20:i + 22], "little")
                spans.append((start, end - start))
                start = end
                i = buf.find(_EOCD, i + 4)
            tail = buf[-21:]
            base += len(block)
    return spans


class DcpShard:
    name = "dcp-shard"

    def sniff(self, probe: Probe) -> bool:
        return probe.path.suffix == ".distcp"

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        spans = item_spans(probe.path)
        inner = []
        with open(probe.path, "rb") as fh:
            for start, length in spans:
                if start + length > probe.size:
                    continue  # reported by the layout check against .metadata
                fh.seek(start)
                if fh.read(4) != ZIP_MAGIC:
                    # torch.load(BytesIO(item)) reads a non-zip item as a legacy pickle stream
                    where = f"{rel}@{start}"
                    part = FileInfo(where, "pickle", length)
                    merge_scans(part, [scan_stream(FileSlice(fh, start, length), where)], where)
                else:
                    part = scan_zip(FileSlice(fh, start, length), f"{rel}@{start}")
                inner.append(part)
        info.meta["items"] = len(spans)
        for part in inner:
            info.globals.extend(g for g in part.globals if g not in info.globals)
            info.findings.extend(f for f in part.findings if f.code not in _PER_FILE_CODES)
        # The items DCP reads back with weights_only=False (BytesIO) are what could run code.
        add_global_findings(info, rel)
        return info
