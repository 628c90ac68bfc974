"""`ckptdoctor reshard SRC DST --world-size M` for a torch.distributed.checkpoint (DCP)
directory: the same state, re-chunked offline the way FSDP2 shards it on M ranks.

dcp.load already reads any saved sharding into the loading ranks' sharding, so a DCP save
resumes on M ranks without this. What it costs there: each rank's load plan reads pieces of
other ranks' items (on 2 -> 3 ranks, rank 1 reads part of rank 0's file and part of rank 1's),
every rank opens every file, and nothing checks the result before the job starts. Resharded
here, every tensor of one or more dimensions is split on dim 0 into torch.chunk pieces for M
ranks (FSDP2's Shard(0), DTensor's chunking), piece r stored in `__r_0.distcp`; so rank r
reads its shard of each sharded tensor as one whole item from its own file
(tests/test_reshard_dcp_real.py asserts this from DCP's own load plans). 0-d tensors (Adam's
`step`) and non-tensor items are stored once, in `__0_0.distcp`, as DCP's dedup stores
replicated values; a tensor the loading job does not shard is read from all M pieces.

Written with DCP's own writer: FileSystemWriter and DCP's global-plan function, driven for
M ranks from one process (a SavePlan per new rank, each written to its own file, one
`.metadata`), so the files are what `dcp.save` writes. Nothing is unpickled outside the
loader chain: `.metadata` is walked statically; every stored range is checked against its
file and every tensor item with torch's reader (skip_data) before anything is sized from the
metadata; tensor bytes are copied from where they lie in the source items, one new chunk in
memory at a time; non-tensor items (small: param groups, counters) go through the loader
chain once, which refuses a code-executing pickle, and are copied as bytes. The source must
be chunked on dim 0 only (FSDP / FSDP2 / DDP saves); a tensor sharded on another dimension
(tensor parallel) is refused with CK734: dcp.load reshards it on load.

Per-rank state: a DCP item whose key names a rank (torchtitan's `dataloader.dp_rank_<r>`) is
kept as saved and reported (ranks >= N find none, ranks >= M are not read; a loader that checks
its saved world size, as torchtitan's does, must be excluded from loading), refused with
--strict. Per-rank files beside the DCP that the framework's layout module names (Lingua's
`train_state_<dp_rank>.json`: a rank without one skips the checkpoint) are kept, and a new
rank without one gets a copy of rank 0's (CK735: re-seeding noted; files of ranks >= M are
reported as read by no rank); --strict refuses. Other files beside it are copied.

The output is staged, re-read (every chunk where the layout puts it, its bytes equal to the
source's), diffed against the source in resume-equivalent mode, and renamed into place only
when both agree."""

from __future__ import annotations

import dataclasses
import io
import math
import re
import shutil
from pathlib import Path
from typing import Any

from .codes import Code
from .convert.common import Options
from .convert.dcp_read import DcpCheckpoint, TensorMeta, dim0_tiling
from .convert.staging import BEFORE_COMMIT, Staging
from .reshard_base import err

COPY_BLOCK = 8 << 20  # bytes compared at a time by the post-write check


@dataclasses.dataclass
class Piece:
    """One chunk of the new layout: rows [start, stop) of dim 0, stored by `rank`."""

    fqn: str
    rank: int
    start: int
    stop: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


def split_rows(shape: tuple[int, ...], world: int) -> list[tuple[int, int]]:
    """torch.chunk's pieces of dim 0 over `world` ranks, (start, stop) per rank that has rows:
    chunk size ceil(d0 / world), the last ranks possibly empty (FSDP2's Shard(0))."""
    d0 = shape[0]
    size = -(-d0 // world) if d0 else 0
    return [(r * size, min(d0, (r + 1) * size)) for r in range(world)
            if size and r * size < d0]


def layout(meta: TensorMeta, world: int) -> list[Piece]:
    """Where the new checkpoint stores this tensor."""
    if not meta.shape or 0 in meta.shape:  # 0-d or empty: stored once, whole
        return [Piece(meta.fqn, 0, 0, meta.shape[0] if meta.shape else 1,
                      (0,) * len(meta.shape), tuple(meta.shape))]
    rest = tuple(meta.shape[1:])
    return [Piece(meta.fqn, r, a, b, (a,) + (0,) * len(rest), (b - a,) + rest)
            for r, (a, b) in enumerate(split_rows(meta.shape, world))]


class _Source:
    """Reads rows of the source tensors from where their stored items hold them
    (DcpCheckpoint.segments: chunks that tile dim 0, each item checked by torch's reader)."""

    def __init__(self, ckpt: DcpCheckpoint):
        self.ckpt = ckpt
        for fqn, meta in ckpt.tensors.items():
            why = dim0_tiling(meta)
            if isinstance(why, str):
                raise err(ckpt.root / ".metadata",
                          f"{fqn}: {why}: tensor-parallel shards are not resharded offline; "
                          "dcp.load reshards it on load to any number of ranks"
                          if "dimension other than 0" in why else f"{fqn}: {why}",
                          hint="a rank's shard is missing or damaged; use the previous "
                               "checkpoint")
            ckpt.segments(fqn)  # every item checked against .metadata before any allocation
        self.handles: dict[Path, Any] = {}
        self.buf = bytearray(0)

    def _fh(self, path: Path) -> Any:
        if path not in self.handles:
            self.handles[path] = open(path, "rb")  # noqa: SIM115 - close()
        return self.handles[path]

    def close(self) -> None:
        for fh in self.handles.values():
            fh.close()
        self.handles.clear()

    def segments(self, meta: TensorMeta, start: int, stop: int):
        """(file handle, absolute offset, nbytes) pieces holding rows [start, stop) in order."""
        per_row = math.prod(meta.shape[1:]) if meta.shape else 1
        for path, offset, n in self.ckpt.byte_ranges(meta.fqn, start * per_row, stop * per_row):
            yield self._fh(path), offset, n

    def fill(self, meta: TensorMeta, piece: Piece) -> Any:
        """Rows [piece.start, piece.stop) as a tensor over the one reused buffer (sized for
        the largest new chunk once, so the allocator is not left fragmented by many large
        short-lived tensors), read straight into it. Valid until the next fill: DCP's serial
        writer writes each tensor before it asks for the next (write() turns off its
        copy-ahead loader)."""
        import torch

        nbytes = _nbytes(meta, piece)
        if nbytes == 0:
            return torch.empty(piece.sizes, dtype=meta.dtype)
        if len(self.buf) < nbytes:
            self.buf = bytearray(nbytes)
        view = memoryview(self.buf)[:nbytes]
        pos = 0
        for fh, off, n in self.segments(meta, piece.start, piece.stop):
            fh.seek(off)
            if fh.readinto(view[pos:pos + n]) != n:
                raise err(fh.name, f"{meta.fqn}: source item cut short")
            pos += n
        if pos != nbytes:
            raise err(meta.fqn, f"{meta.fqn}: source rows hold {pos} of {nbytes} bytes")
        return torch.frombuffer(view, dtype=torch.uint8).view(meta.dtype).reshape(piece.sizes)


def _nbytes(meta: TensorMeta, piece: Piece) -> int:
    n = int(meta.dtype.itemsize)
    for d in piece.sizes:
        n *= d
    return n


def _planner_class():
    from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType

    class _Planner(SavePlanner):
        """Hands DCP's writer one new chunk at a time, read from the source into one reused
        buffer when it is written."""

        def __init__(self, source: _Source, pieces: dict[Any, Piece], raw: dict[str, bytes]):
            self.source, self.pieces, self.raw = source, pieces, raw

        def set_up_planner(self, state_dict: Any, storage_meta: Any = None,
                           is_coordinator: bool = False) -> None:
            pass

        def create_local_plan(self) -> SavePlan:
            raise NotImplementedError  # plans are built by _plans

        def create_global_plan(self, all_plans: list[SavePlan]) -> Any:
            raise NotImplementedError

        def finish_plan(self, new_plan: SavePlan) -> SavePlan:
            return new_plan

        def resolve_data(self, write_item: Any) -> Any:
            if write_item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(self.raw[write_item.index.fqn])
            piece = self.pieces[(write_item.index.fqn, tuple(write_item.index.offset))]
            return self.source.fill(self.source.ckpt.tensors[piece.fqn], piece)

    return _Planner


def _plans(ckpt: DcpCheckpoint, world: int, raw: dict[str, bytes]):
    """One SavePlan per new rank, and the pieces by (fqn, offsets)."""
    import torch
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )

    items: list[list[Any]] = [[] for _ in range(world)]
    pieces: dict[Any, Piece] = {}
    for fqn, meta in ckpt.tensors.items():
        for p in layout(meta, world):
            pieces[(fqn, p.offsets)] = p
            items[p.rank].append(WriteItem(
                index=MetadataIndex(fqn, p.offsets), type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(torch.Size(p.offsets), torch.Size(p.sizes)),
                    properties=TensorProperties(dtype=meta.dtype),
                    size=torch.Size(meta.shape))))
    for fqn in raw:
        items[0].append(WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO))
    return [SavePlan(i, planner_data=dict(ckpt.planner_data or {})) for i in items], pieces


def write(ckpt: DcpCheckpoint, out: Path, world: int) -> dict[Any, Piece]:
    """The new checkpoint, written into `out` by DCP's FileSystemWriter."""
    import warnings

    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.default_planner import create_default_global_save_plan

    source = _Source(ckpt)  # checks every stored tensor item first
    for fqn in ckpt.bytes_items:  # through the loader chain: a code-executing pickle is
        ckpt.load_bytes(fqn)      # refused here, with or without --no-verify
    raw = {fqn: _item_bytes(ckpt, fqn) for fqn in ckpt.bytes_items}
    plans, pieces = _plans(ckpt, world, raw)
    source.buf = bytearray(max((_nbytes(ckpt.tensors[p.fqn], p) for p in pieces.values()),
                               default=0))  # the largest new chunk, allocated once
    planner = _planner_class()(source, pieces, raw)
    # one thread and no copy-ahead: DCP's serial loader, which writes each tensor before it
    # resolves the next (the reused buffer relies on it; with CUDA present DCP would
    # otherwise pick its overlapping loader, which resolves several ahead)
    writer = FileSystemWriter(str(out), single_file_per_rank=True, sync_files=False,
                              thread_count=1, per_thread_copy_ahead=0, overwrite=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.reset()
            writer.set_up_storage_writer(True, rank=0, use_collectives=True)
            plans = [writer.prepare_local_plan(p) for p in plans]
            plans, metadata = create_default_global_save_plan(plans)
            metadata = dataclasses.replace(metadata, planner_data=dict(ckpt.planner_data or {}))
            _dcp_validates(plans, metadata)
            plans = writer.prepare_global_plan(plans)
            results = []
            for plan in plans:
                results.append(writer.write_data(planner.finish_plan(plan), planner).wait())
            writer.finish(metadata, results)
    finally:
        source.close()
    return pieces


def _dcp_validates(plans: list[Any], metadata: Any) -> None:
    """DCP's own global-plan check (chunks inside the tensor, no overlap, full cover), where
    this torch has it."""
    try:
        from torch.distributed.checkpoint.default_planner import _validate_global_plan
    except ImportError:  # older torch: our own re-read below still checks the layout
        return
    found = _validate_global_plan(plans, metadata)
    # newer torch returns the list of problems, older torch True when the plan is valid
    bad = (not found) if isinstance(found, bool) else bool(found)
    if bad:
        raise err("plan", "DCP rejects the new layout"
                          + ("" if isinstance(found, bool) else f": {'; '.join(found)[:300]}"))


def _item_bytes(ckpt: DcpCheckpoint, fqn: str) -> bytes:
    item = ckpt.bytes_items[fqn]
    with open(ckpt.root / item.relative_path, "rb") as fh:
        fh.seek(item.offset)
        data = fh.read(item.length)
    if len(data) != item.length:
        raise err(ckpt.root / item.relative_path, f"{fqn}: item is cut short")
    return data


def verify(src: DcpCheckpoint, out: Path, pieces: dict[Any, Piece], opts: Options) -> None:
    """Re-read the written checkpoint statically: the same tensors and items, every chunk
    where the layout puts it (rank r's in `__r_0.distcp`), its bytes equal to the source's
    rows, compared COPY_BLOCK at a time; non-tensor items byte-equal."""
    from .reshard_verify import bad

    new = DcpCheckpoint(out, opts)
    source = _Source(src)
    by_fqn: dict[str, set[tuple[Any, ...]]] = {}
    for p in pieces.values():
        by_fqn.setdefault(p.fqn, set()).add((p.offsets, p.sizes, f"__{p.rank}_0.distcp"))
    try:
        if set(new.tensors) != set(src.tensors) or set(new.bytes_items) != set(src.bytes_items):
            raise bad(".metadata", "the items differ from the source's")
        for fqn, meta in new.tensors.items():
            old = src.tensors[fqn]
            if meta.dtype != old.dtype or tuple(meta.shape) != tuple(old.shape):
                raise bad(fqn, "dtype or shape differs from the source")
            want = by_fqn.get(fqn, set())
            have = {(c.offsets, c.sizes, c.relative_path) for c in meta.chunks}
            if have != want:
                raise bad(fqn, f"chunks {sorted(have)} are not the layout {sorted(want)}")
            for c in meta.chunks:
                piece = pieces[(fqn, c.offsets)]
                path, off, n = new.data_range(meta, c)
                with open(path, "rb") as fh:
                    fh.seek(off)
                    for sfh, soff, sn in source.segments(old, piece.start, piece.stop):
                        sfh.seek(soff)
                        while sn:
                            k = min(sn, COPY_BLOCK)
                            if fh.read(k) != sfh.read(k):
                                raise bad(fqn, f"chunk at {c.offsets} differs from the source")
                            sn -= k
                            n -= k
                if n:
                    raise bad(fqn, f"chunk at {c.offsets} holds more bytes than the source rows")
        for fqn in new.bytes_items:
            if _item_bytes(new, fqn) != _item_bytes(src, fqn):
                raise bad(fqn, "non-tensor item differs from the source")
    finally:
        source.close()
        new.close()


def per_rank_keys(ckpt: DcpCheckpoint) -> dict[str, int]:
    """Items saved per rank, as the layout modules name them (torchtitan's
    `dataloader.dp_rank_<r>`): key -> rank."""
    from .layouts.torchtitan import DP_RANK_KEY

    out = {}
    for fqn in list(ckpt.bytes_items) + list(ckpt.tensors):
        m = re.search(DP_RANK_KEY, fqn)
        if m:
            out[fqn] = int(m[1])
    return out


def per_rank_files(src: Path) -> dict[str, tuple[int, re.Match[str]]]:
    """Files beside the DCP that hold one rank's state, as the layout modules name them."""
    from .layouts.lingua import TS_RE

    out = {}
    for p in sorted(src.iterdir()):
        m = re.fullmatch(TS_RE, p.name)
        if m and p.is_file():
            out[p.name] = (int(m[1]), m)
    return out


def sidecars(src: Path, out: Path, world: int, strict: bool, result: Any) -> None:
    """Copy the files beside the DCP; per-rank files for every new rank (module docstring)."""
    per_rank = per_rank_files(src)
    for p in sorted(src.iterdir()):
        if p.name == ".metadata" or p.name.endswith(".distcp"):
            continue
        if p.is_symlink():  # never follow a link out of the checkpoint into the output
            raise err(p, f"{p.name} is a symbolic link: not copied into the output",
                      hint="replace it by the file it points to if you trust it (cp -L)")
        if p.is_file():
            shutil.copyfile(p, out / p.name)  # per-rank ones too: each rank keeps its own
    if not per_rank:
        return
    by_rank = {r: name for name, (r, _) in per_rank.items()}
    missing = [r for r in range(world) if r not in by_rank]
    unread = sorted(name for r, name in by_rank.items() if r >= world)
    if (missing or unread) and strict:
        raise err(src, "per-rank files cannot be split: "
                       + ", ".join(unread + [f"no file for new rank {r}" for r in missing])
                       + " (--strict)", hint="drop --strict to copy rank 0's to the new ranks")
    base_name = by_rank.get(0) or by_rank[min(by_rank)]
    _, m = per_rank[base_name]
    for r in missing:
        target = base_name[:m.start(1)] + str(r).zfill(len(m[1])) + base_name[m.end(1):]
        shutil.copyfile(src / base_name, out / target)
    parts = []
    if missing:
        parts.append(f"new rank(s) {', '.join(map(str, missing))} get a copy of {base_name} "
                     "(its data position and RNG: they will read what that rank reads)")
    if unread:
        parts.append(f"{', '.join(unread)} kept but read by no rank of {world}")
    if parts:
        result.findings.append(Code.RESHARD_PER_RANK.finding(
            str(src), "per-rank state files cannot be split: " + "; ".join(parts),
            hint="re-seed the data order of the new ranks if your job relies on it; "
                 "--strict refuses instead", keys=unread + [f"rank{r}" for r in missing]))


def report_per_rank_items(ckpt: DcpCheckpoint, world: int, old_world: int, strict: bool,
                          result: Any) -> None:
    """Items saved per rank are kept as saved and reported (or refused with --strict): a data
    position cannot be mapped onto another world size, and the framework owns the choice.
    torchtitan's dataloader, for one, asserts that its saved world size equals the new one
    (`dataloader resharding is not supported yet`), so the hint names its opt-out."""
    keys = per_rank_keys(ckpt)
    if not keys or world == old_world:
        return
    msg = (f"items saved per rank are kept as saved: {', '.join(sorted(keys)[:6])}"
           + (" ..." if len(keys) > 6 else "")
           + f"; on {world} rank(s) ranks >= {old_world} find none and items of ranks >= "
             f"{world} are not read")
    if strict:
        raise err(ckpt.root, "per-rank items cannot be split: " + msg + " (--strict)")
    result.findings.append(Code.RESHARD_PER_RANK.finding(
        str(ckpt.root), msg,
        hint="a loader that checks its saved world size stops there (torchtitan's dataloader "
             "asserts it): exclude it from loading to start it fresh (torchtitan: "
             "checkpoint.exclude_from_loading = [\"dataloader\"]); --strict refuses instead",
        keys=sorted(keys)))


def old_world_of(ckpt: DcpCheckpoint) -> int:
    """Ranks that saved: the `__<rank>_<n>.distcp` files the metadata names."""
    ranks = set()
    for t in ckpt.tensors.values():
        for c in t.chunks:
            m = re.fullmatch(r"__(\d+)_\d+\.distcp", c.relative_path)
            if m:
                ranks.add(int(m[1]))
    return max(ranks) + 1 if ranks else 1


def _resume_hook(src: Path, result: Any, opts: Options) -> Any:
    """The staged checkpoint must be resume-equivalent to SRC (`ckptdoctor diff
    --resume-equivalent`, what repair / convert / ZeRO reshard also run)."""

    def before_commit(staging: Any) -> None:
        from .convert.resume_check import require
        from .equivalence import check

        eq = check(src, staging.dir, allow=opts.allow, trust=opts.trust,
                   expected=result.expected, left_out=result.left_out,
                   ranks=(result.old_world, result.new_world))
        result.equivalence = eq
        require(eq, staging.dst, "reshard verification failed")

    return before_commit


def reshard_dcp(src: Path, dst: Path, world: int, opts: Options, strict: bool,
                result: Any) -> Any:
    """Stage, write, check and commit (module docstring)."""
    ckpt = DcpCheckpoint(src, opts)
    result.kind = "dcp"
    result.old_world = old_world_of(ckpt)
    try:
        report_per_rank_items(ckpt, world, result.old_world, strict, result)
        staging = Staging(dst, "dir", opts.overwrite)
        token = BEFORE_COMMIT.set(_resume_hook(src, result, opts) if opts.verify else None)
        try:
            assert staging.dir is not None
            pieces = write(ckpt, staging.dir, world)
            sidecars(src, staging.dir, world, strict, result)
            if opts.verify:
                verify(ckpt, staging.dir, pieces, opts)
            staging.commit()
            result.verified = opts.verify
            result.files = [str(p) for p in sorted(dst.iterdir()) if p.is_file()]
        except BaseException:
            staging.abort()
            raise
        finally:
            BEFORE_COMMIT.reset(token)
    finally:
        ckpt.close()
    n_chunks = sum(len(layout(m, world)) for m in ckpt.tensors.values())
    result.findings.append(Code.RESHARD_DONE.finding(
        str(dst), f"DCP: {result.old_world} -> {world} ranks ({len(ckpt.tensors)} tensors in "
                  f"{n_chunks} chunk(s), {len(ckpt.bytes_items)} other item(s)); rank r's "
                  "shards of each tensor are one whole item in __r_0.distcp (0-d tensors and "
                  "other items: once, in __0_0.distcp)"))
    return result
