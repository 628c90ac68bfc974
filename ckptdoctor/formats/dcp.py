"""torch.distributed.checkpoint: `.metadata` (a protocol-4 pickle of DCP's dataclasses) and
`__<rank>_<n>.distcp` shards (each item a torch.save zip written back to back).

DCP itself reads `.metadata` with plain `pickle.load`. Here it is only ever walked by the
symbolic scanner: its globals must all be DCP's own metadata classes, and the values are read
off the symbolic tree, so nothing in the file is imported or called."""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import Code
from ..model import FileInfo, FormatName, ScanState, TensorInfo
from ..pickles.scan import DTYPE_SIZES, Glob, Obj, SymDict, scan_bytes, scan_stream
from ..storage import AnyPath, open_binary, prefetch
from .base import FileSlice, Probe, add_global_findings, merge_scans, worsen
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
    storage: list[StorageEntry] = field(default_factory=list)  # relative_path normalised
    version: str | None = None
    bad_paths: list[str] = field(default_factory=list)  # absolute or escaping relative_paths
    chunk_bytes: list[int] = field(default_factory=list)  # each saved tensor chunk's bytes


def normalise_relative(relative_path: str) -> str | None:
    """The file DCP's FileSystemReader opens for `relative_path` (it joins it to the checkpoint
    directory: `./__0_0.distcp` IS `__0_0.distcp`), relative to that directory; None when the
    path is absolute or climbs out of it (DCP would read a file outside the checkpoint)."""
    text = relative_path.replace("\\", "/")
    if not text or text.startswith("/") or (len(text) > 1 and text[1] == ":") or "\x00" in text:
        return None
    norm = posixpath.normpath(text)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def _state(obj: Any) -> dict[str, Any]:
    st = obj.state if isinstance(obj, Obj) else None
    return dict((k, v) for k, v in st if isinstance(k, str)) if isinstance(st, SymDict) else {}


def _size(v: Any) -> tuple[int, ...]:
    if isinstance(v, Obj) and v.args and isinstance(v.args, tuple) and isinstance(v.args[0], tuple):
        return tuple(int(d) for d in v.args[0] if isinstance(d, int))
    return ()


def _pairs(obj: Any) -> dict[str, Any]:
    """A dataclass's pickled state: a dict, or (as DCP's slotted ones are) a list of pairs."""
    st = obj.state if isinstance(obj, Obj) else None
    items = list(st) if isinstance(st, (SymDict, list, tuple)) else []
    return dict(p for p in items if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str))


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
        chunks = st.get("chunks")
        for c in chunks if isinstance(chunks, (list, tuple)) else []:
            md.chunk_bytes.append(math.prod(_size(_pairs(c).get("sizes")))
                                  * DTYPE_SIZES.get(dtype, 1))
    sd = top.get("storage_data")
    for index, sinfo in (sd if isinstance(sd, SymDict) else []):
        fqn = _state(index).get("fqn")
        s = _state(sinfo)
        if isinstance(s.get("relative_path"), str) and isinstance(s.get("offset"), int) \
                and isinstance(s.get("length"), int):
            norm = normalise_relative(s["relative_path"])
            if norm is None:
                md.bad_paths.append(s["relative_path"])
                continue
            md.storage.append(StorageEntry(str(fqn), norm, s["offset"], s["length"]))
    return md


def read_metadata(path: AnyPath, rel: str) -> tuple[FileInfo, DcpMetadata | None]:
    size = path.stat().st_size
    info = FileInfo(rel, FormatName.DCP_METADATA, size)
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
    _check_storage_paths(path.parent, md, info, rel)
    info.tensors = list(md.tensors.values())
    info.meta.update(version=md.version, tensors=len(md.tensors), bytes_items=len(md.bytes_items),
                     storage_entries=len(md.storage),
                     largest_chunks=sorted(md.chunk_bytes, reverse=True)[:2])
    return info, md


def _check_storage_paths(base: AnyPath, md: DcpMetadata, info: FileInfo, rel: str) -> None:
    """Every storage path must stay inside the checkpoint (CK821), and every BYTES item DCP
    would torch.load(weights_only=False) is scanned: items in `.distcp` shards by DcpShard,
    items placed in any other file here."""
    for bad in md.bad_paths[:5]:
        worsen(info, ScanState.INCONCLUSIVE, Code.DCP_PATH.finding(
            rel, f"storage path {bad!r} is absolute or leaves the checkpoint directory: "
                 "dcp.load would read a file outside it",
            hint="torch.save never writes this; treat the checkpoint as hostile"))
    # a storage.RemotePath is not resolved: object stores have no links
    root = os.path.realpath(base) if isinstance(base, Path) else str(base)
    byte_fqns = set(md.bytes_items)
    for e in md.storage:
        target = base / e.relative_path
        real = os.path.realpath(target) if isinstance(target, Path) else str(target)
        if not (real == root or real.startswith(root + os.sep)):
            worsen(info, ScanState.INCONCLUSIVE, Code.DCP_PATH.finding(
                rel, f"storage path {e.relative_path!r} resolves outside the checkpoint "
                     "(a symlink)", hint="treat the checkpoint as hostile"))
            continue
        if e.fqn not in byte_fqns or target.suffix == ".distcp" or not target.is_file():
            continue  # shards scan their own items; a missing file is CK412 (layout check)
        part = _scan_item(target, e.offset, e.length, f"{rel}->{e.relative_path}@{e.offset}")
        seen = {(g.name, g.opcode) for g in info.globals}
        info.globals.extend(g for g in part.globals if (g.name, g.opcode) not in seen)
        info.findings.extend(f for f in part.findings if f.code not in _PER_FILE_CODES)
        worsen(info, part.scan_state)
    if any(g.klass.value in ("dangerous", "unknown") for g in info.globals):
        info.findings = [f for f in info.findings if f.code not in _PER_FILE_CODES]
        add_global_findings(info, rel)


def _scan_item(path: AnyPath, start: int, length: int, where: str) -> FileInfo:
    """Scan one DCP item as DCP reads it: torch.load(BytesIO(item)) (a zip, else a pickle)."""
    with open_binary(path) as fh:
        fh.seek(start)
        if fh.read(4) != ZIP_MAGIC:
            part = FileInfo(where, FormatName.PICKLE, length)
            merge_scans(part, [scan_stream(FileSlice(fh, start, length), where)], where)
            return part
        return scan_zip(FileSlice(fh, start, length), where)


class DcpMetadataFormat:
    name = FormatName.DCP_METADATA

    def sniff(self, probe: Probe) -> bool:
        n = probe.path.name
        # by name alone: DCP's reader unpickles whatever the file holds, so a .metadata that
        # is not a pickle is damage (CK802), not an `unknown` file without findings
        return (n == ".metadata" or (n.startswith("__") and n.endswith(".metadata"))) \
            and probe.head[:1] != b""

    def read(self, probe: Probe, rel: str) -> FileInfo:
        return read_metadata(probe.path, rel)[0]


_EOCD = b"PK\x05\x06"
MAX_ITEMS = 1_000_000
_PER_FILE_CODES = (Code.DANGEROUS_GLOBAL.code, Code.UNKNOWN_GLOBAL.code,
                   Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code)


def item_spans(path: AnyPath) -> list[tuple[int, int]]:
    """(offset, length) of each item in a .distcp shard.

    The sibling .metadata says where each item is (metadata only, no data read). Torch's zip
    writer puts sizes in data descriptors, not local headers, so without .metadata the shard is
    read once in chunks looking for each zip's end-of-central-directory record."""
    meta = path.parent / ".metadata"
    if meta.is_file():
        _, md = read_metadata(meta, ".metadata")
        if md is not None:
            return sorted({(e.offset, e.length) for e in md.storage
                           if e.relative_path == path.name})  # normalised like DCP does
    spans: list[tuple[int, int]] = []
    start, base, tail = 0, 0, b""
    with open_binary(path) as fh:
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
    name = FormatName.DCP_SHARD

    def sniff(self, probe: Probe) -> bool:
        return probe.path.suffix == ".distcp"

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        spans = item_spans(probe.path)
        if not isinstance(probe.path, Path):  # remote: each item's head and tail, concurrently
            with open_binary(probe.path) as fh:
                prefetch(fh, [r for s, n in spans if s + n <= probe.size
                              for r in ((s, min(n, 16 << 10)),
                                        (max(s, s + n - (16 << 10)), min(n, 16 << 10)))])
        inner = []
        for start, length in spans:
            if start + length > probe.size:
                continue  # reported by the layout check against .metadata
            # torch.load(BytesIO(item)) reads a non-zip item as a legacy pickle stream
            inner.append(_scan_item(probe.path, start, length, f"{rel}@{start}"))
        info.meta["items"] = len(spans)
        for part in inner:
            info.globals.extend(g for g in part.globals if g not in info.globals)
            info.findings.extend(f for f in part.findings if f.code not in _PER_FILE_CODES)
            worsen(info, part.scan_state)
        # The items DCP reads back with weights_only=False (BytesIO) are what could run code.
        add_global_findings(info, rel)
        return info
