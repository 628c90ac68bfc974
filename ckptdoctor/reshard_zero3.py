"""`reshard` for DeepSpeed ZeRO-3: N ranks -> M ranks, offline, streamed per partition.

How ZeRO-3 lays each parameter out over the ranks (ceil(n / W) elements per rank, padded; a
rank's flat groups and optimizer moments per sub-group) is convert/zero3_state.py, which reads
the old checkpoint per parameter here and for `ckptdoctor diff`. Sub-groups cut each param
group where the sum of the partition sizes reaches `zero_optimization.sub_group_size` (default
1e9; DeepSpeedZeroOptimizer_Stage3._create_fp16_sub_groups) - it depends on W, so the
sub-groups are recomputed for M (and checked against the saved ones for N). Frozen parameters
(`frozen_param_fragments`, per rank in the model states) are partitioned the same way and are
re-split too.

Here every parameter is read back from its N partitions and cut into M, one new partition at
a time into one reused buffer; the source pages are dropped after they are read."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .codes import Code
from .convert.common import MAPPED, Options, TensorEntry, release_tensor
from .convert.loading import load_torch
from .convert.zero3_state import Param, part_numel, read_state
from .reshard_base import canon, err, rank_of

OSD = "optimizer_state_dict"
INNER = "optimizer_state_dict"  # the torch optimizer's own state_dict inside the ZeRO-3 state
FLAT = "fp32_flat_groups"
SPLIT_KEYS = {FLAT, INNER, "partition_count"}
MODEL_SPLIT_KEYS = {"frozen_param_fragments", "param_shapes", "dp_world_size"}
DEFAULT_SUB_GROUP_SIZE = 1_000_000_000  # DeepSpeedZeroConfig.sub_group_size's default
VERIFY_CHUNK = 1 << 20


def sub_groups(numels: list[int], world: int, sub_group_size: int | None) -> list[list[int]]:
    """Indices of one param group's parameters cut into sub-groups the way
    DeepSpeedZeroOptimizer_Stage3._create_fp16_sub_groups does for `world` ranks."""
    parts = [part_numel(n, world) for n in numels]
    if not numels:
        return []
    if sub_group_size is None or sub_group_size >= sum(parts):
        return [list(range(len(numels)))]
    out, cur, size = [], [], 0
    for i, p in enumerate(parts):
        cur.append(i)
        size += p
        if size >= sub_group_size or i == len(numels) - 1:
            out.append(cur)
            cur, size = [], 0
    return out


def _read_partition(params: list[Param], rank: int, world: int, out: Any) -> Any:
    """Rank `rank`'s flat partition of these parameters (in order) for `world` ranks."""
    pos = 0
    for p in params:
        pn = part_numel(p.numel, world)
        p.read(rank * pn, (rank + 1) * pn, out[pos:pos + pn])
        pos += pn
    return out[:pos]


def reshard_zero3(ckpt: Any, world: int, opts: Options, strict: bool, result: Any,
                  staging_dir: Path, scratch: Any) -> tuple[list[str], int, int]:
    """Write the ZeRO-3 checkpoint `ckpt` (a ZeroCheckpoint) for `world` ranks into
    staging_dir/<tag>. Returns (optimizer file names, parameters, sub-groups)."""
    import torch

    from .convert.torch_writer import TensorRef, refs_for_tensors, write_torch_zip

    optim_files = sorted(ckpt.tag.glob("*_optim_states.pt"), key=rank_of)
    model_files = sorted(ckpt.tag.glob("*_model_states.pt"), key=rank_of)
    n_old = ckpt.world
    for kind, files in (("optimizer", optim_files), ("model", model_files)):
        if [rank_of(p) for p in files] != list(range(n_old)):
            raise err(ckpt.tag, f"ZeRO-3 {kind} files are not zero_pp_rank_0..{n_old - 1}: "
                                 + ", ".join(p.name for p in files[:4]))
    states = [load_torch(f, opts) for f in optim_files]
    models = [load_torch(f, opts) for f in model_files]
    osds = [s[OSD] for s in states]
    if any(o.get("ds_zero_partition_groups") is not None for o in osds):
        raise err(optim_files[0], "AutoEP ZeRO-3 partition groups: DeepSpeed itself loads "
                                   "them only on the same topology; not resharded")
    inners = [o[INNER] for o in osds]
    if not all(isinstance(i, Mapping) and "state" in i and "param_groups" in i for i in inners):
        raise err(optim_files[0], "the ZeRO-3 optimizer state is not a torch optimizer "
                                   "state_dict: not supported")
    shapes = models[0]["param_shapes"]
    flats = [list(o[FLAT]) for o in osds]
    if any(len(f) != len(shapes) for f in flats):
        raise err(optim_files[0], f"{len(flats[0])} fp32 flat groups, {len(shapes)} "
                                   "param_shapes sub-groups")
    cfg = states[0].get("ds_config") or models[0].get("ds_config") or {}
    zcfg = cfg.get("zero_optimization") if isinstance(cfg, Mapping) else None
    sgs = zcfg.get("sub_group_size", DEFAULT_SUB_GROUP_SIZE) if isinstance(zcfg, Mapping) \
        else DEFAULT_SUB_GROUP_SIZE
    sgs = int(float(sgs)) if sgs is not None else None

    # --- the old layout, parameter by parameter (convert/zero3_state.py) --------------------
    old = read_state(shapes, flats, inners, optim_files, err)
    numel, shape_of, sources = old.numel, old.shape, old.sources
    scalars_of, moments_of, kinds = old.scalars, old.moments, old.kinds

    # --- the new sub-groups, per param group ------------------------------------------------
    groups = inners[0]["param_groups"]
    new_sgs: list[list[str]] = []  # new sub-group -> parameter names
    new_groups_params: list[list[int]] = []
    new_scalars: list[dict[str, Any]] = []
    for g, pg in enumerate(groups):
        old_ids = list(pg["params"])
        names = [n for s in old_ids for n in shapes[s]]
        old_cut = sub_groups([numel[n] for n in names], n_old, sgs)
        if [[names[i] for i in c] for c in old_cut] != [list(shapes[s]) for s in old_ids]:
            raise err(model_files[0], f"param group {g}: the saved sub-groups are not what "
                                       f"sub_group_size {sgs} gives for {n_old} ranks",
                       hint="the checkpoint's ds_config does not describe how it was saved")
        same = len(old_ids) == 1 or all(canon(scalars_of[s]) == canon(scalars_of[old_ids[0]])
                                        for s in old_ids)
        cut = sub_groups([numel[n] for n in names], world, sgs)
        if not same and len(cut) != len(old_ids):
            raise err(optim_files[0], f"param group {g}: its sub-groups' step counters differ "
                                       "and the sub-groups change with the world size")
        ids = []
        for k, c in enumerate(cut):
            ids.append(len(new_sgs))
            new_sgs.append([names[i] for i in c])
            new_scalars.append(scalars_of[old_ids[k] if len(cut) == len(old_ids)
                                          else old_ids[0]])
        new_groups_params.append(ids)

    _per_rank_policy3(states, models, optim_files, strict, result, moments_of)

    # --- write ------------------------------------------------------------------------------
    tagdir = staging_dir / ckpt.tag.name
    tagdir.mkdir()
    def lazy(label: str, params: list[Param], r: int) -> Any:
        size = sum(part_numel(p.numel, world) for p in params)
        dtype = params[0].pieces[0].dtype
        return TensorRef(TensorEntry(label, dtype, (size,), lambda: _read_partition(
            params, r, world, scratch.get(dtype, size)), "reshard"))

    opt_names = []
    prefix = optim_files[0].name.split("_pp_rank_")[0]
    suffix = optim_files[0].name.split("_mp_rank_")[1]
    msuffix = model_files[0].name.split("_mp_rank_")[1]
    mprefix = model_files[0].name.split("_pp_rank_")[0]
    for r in range(world):
        inner = dict(inners[0])
        # a copy per sub-group: one shared `step` tensor would be stepped once per sub-group
        inner["state"] = {t: {**{k: v.clone() if isinstance(v, torch.Tensor) else v
                                 for k, v in new_scalars[t].items()},
                              **{k: lazy(f"{k}.{t}", [sources[k][n] for n in new_sgs[t]], r)
                                 for k in kinds[1:]}}
                          for t in range(len(new_sgs))}
        inner["param_groups"] = [dict(pg, params=ids)
                                 for pg, ids in zip(inners[0]["param_groups"], new_groups_params,
                                                    strict=True)]
        osd = dict(osds[0])
        osd[INNER] = inner
        osd["partition_count"] = world
        osd[FLAT] = [lazy(f"fp32.{t}", [sources["fp32"][n] for n in new_sgs[t]], r)
                     for t in range(len(new_sgs))]
        state = dict(states[0])
        state[OSD] = osd
        name = f"{prefix}_pp_rank_{r}_mp_rank_{suffix}"
        write_torch_zip(tagdir / name, refs_for_tensors(state), opts)
        opt_names.append(name)

    frozen_shapes = models[0].get("frozen_param_shapes") or {}
    frozen: dict[str, Param] = {}
    for fname, shp in frozen_shapes.items():
        n = int(torch.Size(shp).numel())
        frozen[fname] = Param([m["frozen_param_fragments"][fname].reshape(-1)
                                for m in models], n)
    for r in range(world):
        model = dict(models[0])
        model["dp_world_size"] = world
        model["param_shapes"] = [OrderedDict((n, shape_of[n]) for n in sg) for sg in new_sgs]
        if frozen:
            model["frozen_param_fragments"] = {f: lazy(f"frozen.{f}", [p], r)
                                               for f, p in frozen.items()}
        write_torch_zip(tagdir / f"{mprefix}_pp_rank_{r}_mp_rank_{msuffix}",
                        refs_for_tensors(model), opts)
    scratch.bufs.clear()
    if opts.verify:
        _verify3(tagdir, opt_names, [f"{mprefix}_pp_rank_{r}_mp_rank_{msuffix}"
                                     for r in range(world)],
                 new_sgs, sources, kinds, frozen, world, opts)
    return opt_names, sum(numel.values()), len(new_sgs)


def _per_rank_policy3(states: list, models: list, files: list[Path], strict: bool, result: Any,
                      moments_of: dict[int, set[str]]) -> None:
    """Per-rank values that differ between ranks: copied from rank 0, or refused (--strict)."""
    from .reshard_verify import account_per_rank

    differing = []
    for key in states[0]:
        if key != OSD and any(canon(s.get(key)) != canon(states[0][key]) for s in states[1:]):
            differing.append(key)
    for key in states[0][OSD]:
        if key not in SPLIT_KEYS and any(canon(s[OSD].get(key)) != canon(states[0][OSD][key])
                                         for s in states[1:]):
            differing.append(f"{OSD}.{key}")
    for s, st0 in states[0][OSD][INNER]["state"].items():
        for key, v in st0.items():
            if key not in moments_of.get(s, ()) and any(
                    canon(x[OSD][INNER]["state"].get(s, {}).get(key)) != canon(v)
                    for x in states[1:]):
                differing.append(f"{OSD}.{INNER}.state.{s}.{key}")
    if any(canon(x[OSD][INNER]["param_groups"]) != canon(states[0][OSD][INNER]["param_groups"])
           for x in states[1:]):
        differing.append(f"{OSD}.{INNER}.param_groups")
    for key in models[0]:
        if key not in MODEL_SPLIT_KEYS and any(canon(m.get(key)) != canon(models[0][key])
                                               for m in models[1:]):
            differing.append(f"model_states.{key}")
    differing += sorted({k for s in states for k in s} ^ set(states[0]))
    if not differing:
        return
    msg = "per-rank state that cannot be split differs between ranks: " + ", ".join(differing)
    if strict:
        raise err(files[0], msg + " (--strict)", hint="drop --strict to copy rank 0's values")
    result.findings.append(Code.RESHARD_PER_RANK.finding(
        str(files[0].parent), msg + "; copied from rank 0 to every new rank",
        hint="re-seed per-rank RNG / data order if your job relies on it", keys=differing))
    owner = {sg: g for g, pg in enumerate(states[0][OSD][INNER]["param_groups"])
             for sg in pg.get("params", [])}
    account_per_rank(result, differing, len(states), owner)


def _verify3(tagdir: Path, opt_names: list[str], model_names: list[str], new_sgs: list,
             sources: dict, kinds: list[str], frozen: dict, world: int, opts: Options) -> None:
    """Re-read every written rank file, one at a time: each parameter's partition on each new
    rank must equal the source's elements there, and the padding must hold zeros."""
    import torch

    from .reshard_verify import bad as _bad

    bufs: dict[Any, Any] = {}

    def same(piece: Any, p: Param, r: int) -> bool:
        pn = part_numel(p.numel, world)
        if piece.numel() != pn:
            return False
        mapped = MAPPED.tensor_is_mapped(piece)
        for a in range(0, pn, VERIFY_CHUNK):
            b = min(pn, a + VERIFY_CHUNK)
            if piece.dtype != p.pieces[0].dtype:
                return False
            buf = bufs.setdefault(piece.dtype, torch.empty(VERIFY_CHUNK, dtype=piece.dtype))
            p.read(r * pn + a, r * pn + b, buf)
            if not torch.equal(piece[a:b], buf[:b - a]):
                return False
            release_tensor(piece[a:b], mapped)
        return True

    for r, name in enumerate(opt_names):
        osd = load_torch(tagdir / name, opts)[OSD]
        MAPPED.refresh()
        for t, names in enumerate(new_sgs):
            for kind in kinds:
                flat = osd[FLAT][t] if kind == "fp32" else osd[INNER]["state"][t][kind]
                flat = flat.reshape(-1)
                pos = 0
                for n in names:
                    p = sources[kind][n]
                    pn = part_numel(p.numel, world)
                    if not same(flat[pos:pos + pn], p, r):
                        raise _bad(name, f"sub-group {t}: {kind} of {n} differs from the source")
                    pos += pn
                if pos != flat.numel():
                    raise _bad(name, f"sub-group {t}: {kind} holds {flat.numel()} elements, "
                                     f"{pos} expected")
        del osd
    for r, name in enumerate(model_names):
        model = load_torch(tagdir / name, opts)
        MAPPED.refresh()
        if model.get("dp_world_size") != world:
            raise _bad(name, f"dp_world_size {model.get('dp_world_size')} != {world}")
        for f, p in frozen.items():
            if not same(model["frozen_param_fragments"][f].reshape(-1), p, r):
                raise _bad(name, f"frozen parameter {f} differs from the source")
        del model
