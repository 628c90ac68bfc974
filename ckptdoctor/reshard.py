"""`ckptdoctor reshard SRC DST --world-size M`: a DeepSpeed ZeRO-1/2 checkpoint saved on N
data-parallel ranks rewritten, offline and on CPU, for M ranks, so that DeepSpeed's own
`load_checkpoint` resumes it on M ranks (it refuses a different DP world size otherwise:
"Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not
currently supported").

How DeepSpeed partitions (runtime/zero/stage_1_and_2.py, checked against 0.19): each param
group is flattened in parameter order (plus the per-parameter `param_alignment_paddings`,
which do not depend on the world size) and padded at the end to a multiple of
2 * world_size (`nccl_start_alignment_factor`); rank r owns the r-th of world_size equal
partitions. Rank r's `group_paddings[i]` is the padding inside its partition. The file saves
`single_partition_of_fp32_groups` without that padding, and the base optimizer's per-group
state (`exp_avg`, `exp_avg_sq`, SGD's `momentum_buffer`, ... any tensor of the partition's
size) with it. Here the N old partitions are treated as one flat array per group and cut again
for M ranks: the fp32 weights unpadded, the optimizer moments padded with zeros (what
DeepSpeed's padding holds), `group_paddings`, `partition_count` and `param_slice_mappings`
(each parameter's fragment in the rank's partition) recomputed, `dp_world_size` in the model
states set to M, `latest` and the per-rank file names written.

State that is one value per rank and cannot be split (any key that differs between ranks
beyond those above, a non-flat optimizer state such as a factored second moment) is reported
with the policy applied: copied from rank 0 (CK735), or refused with --strict. A non-flat
optimizer tensor is always refused: copying it would be wrong.

Memory: the sources are mmap-ed; each new partition is assembled when it is written and
dropped after, so the peak is about one partition. Output is staged beside DST, re-read and
compared with the source, then diffed against it in resume-equivalent mode (reshard_verify.py),
and renamed into place only when both agree."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codes import Code
from .convert.common import ConvertTarget, Options, TensorEntry
from .convert.deepspeed_read import ZeroCheckpoint
from .convert.loading import load_torch
from .convert.staging import BEFORE_COMMIT, Staging
from .model import Finding
from .reshard_base import OSD, canon, err, rank_of
from .reshard_verify import account_per_rank, resume_hook, verify_split

ALIGN = 2  # DeepSpeed's nccl_start_alignment_factor
SPLIT_KEYS = {"single_partition_of_fp32_groups", "base_optimizer_state", "group_paddings",
              "partition_count", "param_slice_mappings"}


@dataclass
class ReshardResult:
    src: str
    dst: str
    old_world: int = 0
    new_world: int = 0
    stage: int = 0
    tag: str = ""
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verified: bool = False
    kind: str = "deepspeed"  # or "dcp" (reshard_dcp.py)
    # what the resume-equivalence check may find different (reshard_verify.account_per_rank)
    expected: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    equivalence: Any = None  # equivalence.Equivalence of the staged output, once checked

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "kind": self.kind,
                "old_world_size": self.old_world,
                "world_size": self.new_world, "zero_stage": self.stage, "tag": self.tag,
                "files": self.files, "verified": self.verified,
                "resume_equivalent": None if self.equivalence is None else self.equivalence.ok,
                "findings": [f.to_json() for f in self.findings]}


def partition_layout(padded_numel: int, world: int) -> tuple[int, list[int]]:
    """(partition size, padding inside each rank's partition), as DeepSpeed computes them."""
    align = ALIGN * world
    aligned = -(-padded_numel // align) * align
    size = aligned // world
    pads = []
    for r in range(world):
        left = r * size
        if padded_numel <= left:
            pads.append(size)
        elif padded_numel < left + size:
            pads.append(left + size - padded_numel)
        else:
            pads.append(0)
    return size, pads


class _Flat:
    """One param group's data over the old ranks, as one flat array: read [start, end)."""

    def __init__(self, pieces: list[Any]):
        from .convert.common import MAPPED

        MAPPED.refresh()
        self.pieces = pieces  # unpadded, rank order
        self.mapped = [MAPPED.tensor_is_mapped(p) for p in pieces]
        self.starts = []
        pos = 0
        for p in pieces:
            self.starts.append(pos)
            pos += p.numel()
        self.numel = pos

    def read(self, start: int, end: int, size: int, out: Any = None) -> Any:
        """Elements [start, end) zero-padded to `size`, into `out` (a reused buffer of at
        least `size` elements) when given."""
        import torch

        from .convert.common import release_tensor

        if out is None:
            out = torch.empty(size, dtype=self.pieces[0].dtype)
        out = out[:size]
        filled = 0
        for p, s, mapped in zip(self.pieces, self.starts, self.mapped, strict=True):
            lo, hi = max(start, s), min(end, s + p.numel())
            if lo < hi:
                src = p.reshape(-1)[lo - s:hi - s]
                out[lo - start:hi - start] = src
                filled = max(filled, hi - start)
                release_tensor(src, mapped)  # the source's pages: read once, then dropped
        out[max(0, filled):].zero_()
        return out


class _Scratch:
    """One reused buffer per dtype for the partitions the writer streams one at a time: the
    writer has consumed a partition before it asks for the next, so peak memory is one
    partition however many are written (and the allocator is not left fragmented)."""

    def __init__(self) -> None:
        self.bufs: dict[Any, Any] = {}

    def get(self, dtype: Any, size: int) -> Any:
        import torch

        buf = self.bufs.get(dtype)
        if buf is None or buf.numel() < size:
            self.bufs[dtype] = None
            buf = self.bufs[dtype] = torch.empty(size, dtype=dtype)
        return buf


def _lazy(name: str, flat: _Flat, start: int, end: int, size: int, scratch: _Scratch) -> Any:
    """A placeholder the torch writer fills when it writes this tensor (one at a time)."""
    from .convert.torch_writer import TensorRef

    dtype = flat.pieces[0].dtype
    return TensorRef(TensorEntry(name, dtype, (size,),
                                 lambda: flat.read(start, end, size, scratch.get(dtype, size)),
                                 "reshard"))


def reshard(src: str | Path, dst: str | Path, world_size: int, *, strict: bool = False,
            verify: bool = True, overwrite: bool = False, allow: tuple[str, ...] = (),
            trust: bool = False) -> ReshardResult:
    """Rewrite the DeepSpeed ZeRO-1/2/3 checkpoint SRC for `world_size` ranks at DST."""
    src, dst = Path(src), Path(dst)
    result = ReshardResult(str(src), str(dst), new_world=world_size)
    if world_size < 1:
        raise err(dst, f"--world-size {world_size}: must be at least 1")
    if dst.resolve() == src.resolve():
        raise err(dst, "DST is SRC: reshard never writes over its source")
    if src.resolve() in dst.resolve().parents or dst.resolve() in src.resolve().parents:
        raise err(dst, "DST and SRC are inside one another: reshard never writes into or over "
                       "its source", hint="choose a DST beside SRC")
    opts = Options(ConvertTarget.TORCH, allow=tuple(allow), trust=trust, verify=verify,
                   overwrite=overwrite)
    if (src / ".metadata").is_file():
        from .reshard_dcp import reshard_dcp

        return reshard_dcp(src, dst, world_size, opts, strict, result)
    ckpt = ZeroCheckpoint(src, opts)
    result.stage, result.old_world, result.tag = ckpt.stage, ckpt.world, ckpt.tag.name
    if ckpt.stage == 3:
        return _reshard3(ckpt, src, dst, world_size, opts, strict, result)
    optim_files = sorted(ckpt.tag.glob("*_optim_states.pt"), key=lambda p: rank_of(p))
    if [rank_of(p) for p in optim_files] != list(range(ckpt.world)):
        raise err(ckpt.tag, "optimizer files are not zero_pp_rank_0..N-1: "
                             + ", ".join(p.name for p in optim_files[:4]))
    states = [load_torch(f, opts) for f in optim_files]
    osds = [s[OSD] for s in states]
    model = ckpt.models[0]
    if len(ckpt.models) != 1:
        raise err(ckpt.tag, f"{len(ckpt.models)} model state files: ZeRO-1/2 writes one")
    shapes = model["param_shapes"]
    plan = _plan(osds, shapes, ckpt, world_size, optim_files)
    _per_rank_policy(states, optim_files, strict, result,
                     {g["group"]: set(g["moments"]) for g in plan})
    scratch = _Scratch()
    new_states = [_rank_state(states[0], plan, r, world_size, scratch)
                  for r in range(world_size)]
    new_model = dict(model)
    new_model["dp_world_size"] = world_size

    from .convert.torch_writer import refs_for_tensors, write_torch_zip

    def write(staging_dir: Path) -> None:
        tagdir = staging_dir / ckpt.tag.name
        tagdir.mkdir()
        prefix = optim_files[0].name.split("_pp_rank_")[0]
        suffix = optim_files[0].name.split("_mp_rank_")[1]
        names = []
        for r, st in enumerate(new_states):
            name = f"{prefix}_pp_rank_{r}_mp_rank_{suffix}"
            write_torch_zip(tagdir / name, refs_for_tensors(st), opts)
            names.append(name)
        write_torch_zip(tagdir / ckpt.model_files[0].name, refs_for_tensors(new_model), opts)
        scratch.bufs.clear()
        if verify:
            verify_split(tagdir, names, plan, opts, world_size)

    _staged(ckpt, src, dst, opts, result, write)
    result.findings.append(Code.RESHARD_DONE.finding(
        str(dst), f"ZeRO-{ckpt.stage} {ckpt.tag.name}: {ckpt.world} -> {world_size} ranks "
                  f"({sum(g['numel'] for g in plan)} parameters in {len(plan)} group(s))"))
    return result


def _reshard3(ckpt: ZeroCheckpoint, src: Path, dst: Path, world_size: int, opts: Options,
              strict: bool, result: ReshardResult) -> ReshardResult:
    """ZeRO-3 (reshard_zero3.py), staged, verified and committed like ZeRO-1/2."""
    from .reshard_zero3 import reshard_zero3

    done: list[int] = []

    def write(staging_dir: Path) -> None:
        _, numel, n_sub = reshard_zero3(ckpt, world_size, opts, strict, result, staging_dir,
                                        _Scratch())
        done.extend((numel, n_sub))

    _staged(ckpt, src, dst, opts, result, write)
    numel, n_sub = done
    result.findings.append(Code.RESHARD_DONE.finding(
        str(dst), f"ZeRO-3 {ckpt.tag.name}: {ckpt.world} -> {world_size} ranks "
                  f"({numel} parameters in {n_sub} sub-group(s))"))
    return result


def _staged(ckpt: ZeroCheckpoint, src: Path, dst: Path, opts: Options, result: ReshardResult,
            write: Callable[[Path], None]) -> None:
    """Stage the output beside DST (`write` fills the tag directory, then `latest` and
    zero_to_fp32.py), check it (reshard_verify.py) and rename it into place; on any failure
    remove everything staged."""
    staging = Staging(dst, "dir", opts.overwrite)
    token = BEFORE_COMMIT.set(resume_hook(src, ckpt.tag, result, opts) if opts.verify else None)
    try:
        assert staging.dir is not None
        write(staging.dir)
        (staging.dir / "latest").write_text(ckpt.tag.name)
        for extra in ("zero_to_fp32.py",):
            p = ckpt.tag.parent / extra
            if p.is_file():
                (staging.dir / extra).write_bytes(p.read_bytes())
        staging.commit()
        result.verified = opts.verify
        result.files = [str(p) for p in sorted(dst.rglob("*")) if p.is_file()]
    except BaseException:
        staging.abort()
        raise
    finally:
        BEFORE_COMMIT.reset(token)


def _plan(osds: list, shapes: list, ckpt: ZeroCheckpoint, world: int, files: list[Path]) -> list:
    """Per group: the old data as flat arrays and the new layout."""
    import torch

    plan = []
    for i, group_shapes in enumerate(shapes):
        names = list(group_shapes)
        numels = [int(torch.Size(s).numel()) for s in group_shapes.values()]
        pads = osds[0].get("param_alignment_paddings")
        ppad = list(pads[i]) if pads else [0] * len(numels)
        if len(ppad) != len(numels):
            raise err(files[0], f"group {i}: {len(ppad)} alignment paddings for "
                                 f"{len(numels)} parameters")
        padded = sum(numels) + sum(ppad)
        fp32 = [osd["single_partition_of_fp32_groups"][i] for osd in osds]
        flat = _Flat(fp32)
        if flat.numel != padded:
            raise err(files[0], f"group {i}: the ranks' fp32 partitions hold {flat.numel} "
                                 f"elements, the parameters {padded}")
        base = [osd["base_optimizer_state"] for osd in osds]
        if not all(isinstance(b, Mapping) and "state" in b for b in base):
            raise err(files[0], "base_optimizer_state is not a torch optimizer state_dict "
                                 "(elastic checkpoint): not supported")
        old_pads = [list(osd["group_paddings"])[i] for osd in osds]
        moments: dict[str, _Flat] = {}
        scalars: dict[str, Any] = {}
        st0 = base[0]["state"].get(i, {})
        for key, v in st0.items():
            if isinstance(v, torch.Tensor) and v.dim() == 1 and all(
                    base[r]["state"][i][key].numel() == fp32[r].numel() + old_pads[r]
                    for r in range(len(osds))):
                moments[key] = _Flat([base[r]["state"][i][key][:fp32[r].numel()]
                                      for r in range(len(osds))])
            elif isinstance(v, torch.Tensor) and v.numel() > 1:
                raise err(files[0], f"group {i} optimizer state {key!r} {tuple(v.shape)} is not "
                                     "a flat partition (factored state?): it cannot be re-split")
            else:
                scalars[key] = v
        size, new_pads = partition_layout(padded, world)
        offsets, pos = [], 0
        for n, p in zip(numels, ppad, strict=True):
            offsets.append(pos)
            pos += n + p
        plan.append({"group": i, "names": names, "numels": numels, "offsets": offsets,
                     "numel": sum(numels), "padded": padded, "size": size, "pads": new_pads,
                     "fp32": flat, "moments": moments, "scalars": scalars})
    return plan


def _per_rank_policy(states: list, files: list[Path], strict: bool, result: ReshardResult,
                     moments_of: dict[int, set[str]]) -> None:
    """Keys that are one value per rank and differ: copied from rank 0, or refused (--strict)."""
    differing = []
    for key in states[0]:
        if key == OSD:
            continue
        if any(canon(s.get(key)) != canon(states[0][key]) for s in states[1:]):
            differing.append(key)
    for key in states[0][OSD]:
        if key in SPLIT_KEYS:
            continue
        if any(canon(s[OSD].get(key)) != canon(states[0][OSD][key]) for s in states[1:]):
            differing.append(f"{OSD}.{key}")
    # inside the base optimizer state: everything but the re-split tensors is per group and
    # must be the same on every rank (step counters, hyper-parameters)
    for i, st0 in states[0][OSD]["base_optimizer_state"]["state"].items():
        for key, v in st0.items():
            if key in moments_of.get(i, ()):
                continue
            if any(canon(s[OSD]["base_optimizer_state"]["state"][i].get(key)) != canon(v)
                   for s in states[1:]):
                differing.append(f"{OSD}.base_optimizer_state.state.{i}.{key}")
    if any(canon(s[OSD]["base_optimizer_state"].get("param_groups"))
           != canon(states[0][OSD]["base_optimizer_state"].get("param_groups"))
           for s in states[1:]):
        differing.append(f"{OSD}.base_optimizer_state.param_groups")
    extra = {k for s in states for k in s} ^ set(states[0])
    differing += sorted(extra)
    if not differing:
        return
    msg = ("per-rank state that cannot be split differs between ranks: " + ", ".join(differing))
    if strict:
        raise err(files[0], msg + " (--strict)", hint="drop --strict to copy rank 0's values")
    result.findings.append(Code.RESHARD_PER_RANK.finding(
        str(files[0].parent), msg + "; copied from rank 0 to every new rank",
        hint="re-seed per-rank RNG / data order if your job relies on it", keys=differing))
    account_per_rank(result, differing, len(states))


def _fragment(template: Any, numel: int, start: int) -> Any:
    from .standins import StandIn

    if isinstance(template, StandIn):
        out = copy.copy(template)
        out.args = (numel, start)
        return out
    return type(template)(numel=numel, start=start)


def _rank_state(state0: dict, plan: list, r: int, world: int, scratch: _Scratch) -> dict:
    """Rank r's new optimizer file: rank 0's values with the split keys recomputed."""
    out = dict(state0)
    osd = dict(state0[OSD])
    fp32, paddings, mappings, base_state = [], [], [], {}
    template = None
    for m in state0[OSD].get("param_slice_mappings") or []:
        for v in m.values():
            template = v
            break
    for g in plan:
        size, pad = g["size"], g["pads"][r]
        start, end = r * size, (r + 1) * size
        real_end = min(end, g["padded"])
        fp32.append(_lazy(f"fp32.{g['group']}", g["fp32"], start, real_end, max(0, size - pad),
                          scratch))
        paddings.append(pad)
        st = {}
        for key, v in g["scalars"].items():
            st[key] = v
        for key, flat in g["moments"].items():
            st[key] = _lazy(f"{key}.{g['group']}", flat, start, real_end, size, scratch)
        base_state[g["group"]] = st
        mapping = {}
        for name, off, n in zip(g["names"], g["offsets"], g["numels"], strict=True):
            lo, hi = max(off, start), min(off + n, end)
            if lo < hi and template is not None:
                mapping[name] = _fragment(template, hi - lo, lo - start)
        mappings.append(type(state0[OSD]["param_slice_mappings"][g["group"]])(mapping)
                        if state0[OSD].get("param_slice_mappings") else mapping)
    osd["single_partition_of_fp32_groups"] = fp32
    osd["group_paddings"] = paddings
    osd["partition_count"] = [world] * len(plan) if isinstance(
        state0[OSD].get("partition_count"), (list, tuple)) else world
    if "param_slice_mappings" in osd:
        osd["param_slice_mappings"] = mappings
    base = dict(state0[OSD]["base_optimizer_state"])
    base["state"] = base_state
    osd["base_optimizer_state"] = base
    out[OSD] = osd
    return out


def render(result: ReshardResult) -> str:
    if result.kind == "dcp":
        lines = [f"resharded {result.src} -> {result.dst}: DCP, {result.old_world} -> "
                 f"{result.new_world} ranks, "
                 + ("verified" if result.verified else "NOT verified (--no-verify)")]
    else:
        lines = [f"resharded {result.src} -> {result.dst}: ZeRO-{result.stage} {result.tag}, "
                 f"{result.old_world} -> {result.new_world} ranks, "
                 + ("verified" if result.verified else "NOT verified (--no-verify)")]
    lines += [f"  wrote {f}" for f in result.files]
    for f in result.findings:
        lines.append(f"  {f.code} {f.severity}: {f.message}")
        if f.hint:
            lines.append(f"    hint: {f.hint}")
    return "\n".join(lines) + "\n"
