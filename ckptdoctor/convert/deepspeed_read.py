"""DeepSpeed ZeRO 1/2/3 -> consolidated fp32 weights, without DeepSpeed installed.

A re-implementation of DeepSpeed's zero_to_fp32.py merge (checked against its source in
DeepSpeed's main branch, 2025-2026): the files are read through the loader chain (their LossScaler,
ZeroStageEnum and fragment_address globals load as allow-listed stand-ins), with mmap, and
each parameter is gathered on demand from the ranks' fp32 partitions, one at a time:

  ZeRO 1/2  per param group, the ranks' `single_partition_of_fp32_groups[i]` concatenated
            in rank order hold the parameters of `param_shapes[i]` back to back, then the
            padding (`group_paddings`, on the last rank; the total is aligned to 2*world).
  ZeRO 3    every parameter is split into world pieces of ceil(numel/world) elements (the
            last padded); rank r's `fp32_flat_groups` concatenated hold its piece of each
            parameter in `param_shapes` order.

Buffers come from the model states' `module`, floating ones as fp32 like zero_to_fp32 (which
casts every buffer; integer ones such as num_batches_tracked keep their dtype here), frozen
parameters from `frozen_param_fragments`, and `shared_params` aliases point at their source."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import MAPPED, Options, TensorEntry, fail
from .loading import load_torch
from .sources import deepspeed_tag_dir


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _as_int(v: Any, what: str, where: Path) -> int:
    """An int, an IntEnum, or a loader stand-in for an enum (`.value`)."""
    cand: Any
    for cand in (v, getattr(v, "value", None), (getattr(v, "args", None) or (None,))[0]):
        if isinstance(cand, bool):
            continue
        try:
            return int(cand)
        except (TypeError, ValueError):
            continue
    raise fail(where, f"{what} is {v!r}, not a number")


@dataclass
class _Flat:
    """One rank's fp32 flat tensors for one group (or its groups, stage 3), read lazily."""

    tensors: list[Any]
    mapped: list[bool]

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def copy_range(self, start: int, n: int, out: Any, out_pos: int) -> None:
        """out[out_pos:out_pos+n] = the virtual concatenation's [start, start+n)."""
        base = 0
        for t, mapped in zip(self.tensors, self.mapped, strict=True):
            size = t.numel()
            lo, hi = max(start, base), min(start + n, base + size)
            if lo < hi:
                src = t.reshape(-1)[lo - base:hi - base]
                out[out_pos + (lo - start):out_pos + (hi - start)].copy_(src)
                if mapped:
                    MAPPED.release(src.data_ptr(), src.numel() * src.element_size())
            base += size
            if base >= start + n:
                break


class ZeroCheckpoint:
    def __init__(self, src: Path, opts: Options):
        self.tag = deepspeed_tag_dir(Path(src))
        optim_files = sorted(self.tag.glob("*_optim_states.pt"), key=_natural)
        model_files = sorted(self.tag.glob("*_model_states.pt"), key=_natural)
        if not model_files:
            raise fail(self.tag, f"{self.tag}: no *_model_states.pt")
        optims = []
        for f in optim_files:
            obj = load_torch(f, opts)
            osd = obj.get("optimizer_state_dict") if isinstance(obj, Mapping) else None
            if not isinstance(osd, Mapping) or "zero_stage" not in osd:
                raise fail(f, f"{f.name} is not a ZeRO optimizer state (no zero_stage)")
            optims.append((f, osd))
        f0, osd0 = optims[0]
        self.stage = _as_int(osd0["zero_stage"], "zero_stage", f0)
        world = osd0.get("partition_count")
        world = max(_as_int(w, "partition_count", f0) for w in world) \
            if isinstance(world, (list, tuple)) else _as_int(world, "partition_count", f0)
        if world != len(optims):
            raise fail(self.tag, f"expected {world} *_optim_states.pt files (partition_count) "
                                 f"in {self.tag}, found {len(optims)}",
                       hint="a rank's optimizer state was not saved or an old checkpoint was "
                            "partly overwritten; use the previous checkpoint")
        self.world = world
        if self.stage in (1, 2):
            key = "single_partition_of_fp32_groups"
        elif self.stage == 3:
            key = "fp32_flat_groups"
        else:
            raise fail(f0, f"zero_stage {self.stage}: not a partitioned (ZeRO 1/2/3) checkpoint")
        MAPPED.refresh()
        self.flat: list[list[Any]] = []  # [rank][group] -> tensor
        self.paddings: list[list[int]] = []
        for f, osd in optims:
            groups = osd.get(key)
            if not isinstance(groups, (list, tuple)) or not groups:
                raise fail(f, f"{f.name}: no {key}")
            self.flat.append(list(groups))
            pads = osd.get("group_paddings")
            self.paddings.append([_as_int(p, "group_paddings", f) for p in pads]
                                 if isinstance(pads, (list, tuple)) else [])
        self.mapped = [[MAPPED.tensor_is_mapped(t) for t in groups] for groups in self.flat]
        self.models = [load_torch(f, opts) for f in model_files]
        for f, m in zip(model_files, self.models, strict=True):
            if not isinstance(m, Mapping) or "param_shapes" not in m or "buffer_names" not in m:
                raise fail(f, f"{f.name}: not a DeepSpeed model state (no param_shapes)")
            if _as_int(m.get("mp_world_size", 1) or 1, "mp_world_size", f) > 1:
                raise fail(f, "model-parallel (mp_world_size > 1) ZeRO checkpoints are not "
                              "supported", hint="consolidate each mp rank with DeepSpeed")
        self.model_files = model_files

    # --- the state dict, as lazy entries -------------------------------------------------
    def entries(self) -> tuple[list[tuple[str, TensorEntry]], dict[str, str]]:
        """(name, entry) in zero_to_fp32's order, and shared aliases {alias: source}."""
        import torch

        m0, f0 = self.models[0], self.model_files[0]
        out: list[tuple[str, TensorEntry]] = []
        module = m0.get("module") or {}
        for name in m0["buffer_names"]:
            if name in module and isinstance(module[name], torch.Tensor):
                b = module[name]
                out.append((name, TensorEntry(name, torch.float32 if b.is_floating_point()
                                              else b.dtype, tuple(b.shape),
                                              functools.partial(_float_buffer, b), str(f0))))
        out += self._frozen()
        out += self._stage12() if self.stage <= 2 else self._stage3()
        shared = m0.get("shared_params") or {}
        return out, {str(k): str(v) for k, v in dict(shared).items()}

    def _frozen(self) -> list[tuple[str, TensorEntry]]:
        m0 = self.models[0]
        shapes = m0.get("frozen_param_shapes") or {}
        if not shapes:
            return []
        out = []
        for name, shape in shapes.items():
            shape = tuple(int(d) for d in shape)
            numel = math.prod(shape)
            if self.stage <= 2:
                frag = m0["frozen_param_fragments"][name]
                load = functools.partial(frag.reshape, shape)
                dtype = frag.dtype
            else:
                frags = [m["frozen_param_fragments"][name] for m in self.models]
                dtype = frags[0].dtype
                load = functools.partial(_concat_frozen, frags, numel, shape)
            out.append((name, TensorEntry(name, dtype, shape, load, str(self.tag))))
        return out

    def _shapes(self) -> list[list[tuple[str, tuple[int, ...]]]]:
        groups = self.models[0]["param_shapes"]
        if isinstance(groups, Mapping):
            groups = [groups]
        return [[(str(n), tuple(int(d) for d in s)) for n, s in g.items()] for g in groups]

    def _stage12(self) -> list[tuple[str, TensorEntry]]:
        import torch

        groups = self._shapes()
        n_groups = len(self.flat[0])
        if len(groups) != n_groups or any(len(r) != n_groups for r in self.flat):
            raise fail(self.tag, f"param_shapes has {len(groups)} groups, the fp32 partitions "
                                 f"{n_groups}: files from different runs?")
        out = []
        for gi, shapes in enumerate(groups):
            ranks, starts, total = _joined([self.flat[r][gi] for r in range(self.world)],
                                           [self.mapped[r][gi] for r in range(self.world)])
            offset = 0
            for name, shape in shapes:
                numel = math.prod(shape)
                load = functools.partial(_gather12, ranks, starts, offset, numel, shape)
                out.append((name, TensorEntry(
                    name, torch.float32, shape, load, str(self.tag),
                    read=functools.partial(_range12, torch.float32, ranks, starts, offset))))
                offset += numel
            # zero_to_fp32's check (both rounded up to 2*world), or the exact group_paddings
            pad = sum(p[gi] for p in self.paddings if gi < len(p))
            align = 2 * self.world
            ok = align * math.ceil(offset / align) == align * math.ceil(total / align) \
                or offset + pad == total
            if not ok:
                raise fail(self.tag, f"group {gi}: parameters need {offset} elements, the "
                                     f"partitions hold {total} (padding {pad}): inconsistent "
                                     "checkpoint")
        return out

    def _stage3(self) -> list[tuple[str, TensorEntry]]:
        import torch

        shapes = [p for g in self._shapes() for p in g]
        ranks = [_Flat(list(self.flat[r]), list(self.mapped[r])) for r in range(self.world)]
        out, offset = [], 0
        for name, shape in shapes:
            numel = math.prod(shape)
            piece = math.ceil(numel / self.world)
            out.append((name, TensorEntry(
                name, torch.float32, shape,
                functools.partial(_gather3, ranks, offset, numel, piece, shape),
                str(self.tag), read=functools.partial(_range3, ranks, offset, numel, piece))))
            offset += piece
        avail = ranks[0].numel
        if offset != avail or any(r.numel != avail for r in ranks):
            raise fail(self.tag, f"ZeRO-3 partitions hold {[r.numel for r in ranks]} elements, "
                                 f"the parameters need {offset} per rank: inconsistent checkpoint")
        return out


def _float_buffer(b: Any) -> Any:
    """A buffer as zero_to_fp32 writes it: floating point ones in float32."""
    return b.float() if b.is_floating_point() else b


def _concat_frozen(frags: list[Any], numel: int, shape: tuple[int, ...]) -> Any:
    """A ZeRO-3 frozen parameter: its per-rank fragments concatenated, padding cut."""
    import torch

    return torch.cat([f.reshape(-1) for f in frags])[:numel].reshape(shape)


def _same(value: Any) -> Any:
    """`load` of an entry that is already in memory."""
    return value


def _joined(tensors: list[Any], mapped: list[bool]) -> tuple[list[_Flat], list[int], int]:
    """The ranks' flat partitions of one group as one virtual array: (per-rank readers, each
    rank's start in it, total elements)."""
    ranks = [_Flat([t], [m]) for t, m in zip(tensors, mapped, strict=True)]
    starts, total = [], 0
    for rk in ranks:
        starts.append(total)
        total += rk.numel
    return ranks, starts, total


def _gather12_as(dtype: Any, ranks: list[_Flat], starts: list[int], offset: int, numel: int,
                 shape: tuple) -> Any:
    """_gather12 in the moment's own dtype."""
    return _range12(dtype, ranks, starts, offset, 0, numel).view(shape)


def _gather12(ranks: list[_Flat], starts: list[int], offset: int, numel: int, shape: tuple):
    import torch

    return _range12(torch.float32, ranks, starts, offset, 0, numel).view(shape)


def _range12(dtype: Any, ranks: list[_Flat], starts: list[int], offset: int, a: int,
             b: int) -> Any:
    """ZeRO-1/2: elements [a, b) of the parameter at `offset` in the ranks' joined partitions."""
    import torch

    out = torch.empty(b - a, dtype=dtype)
    for rk, base in zip(ranks, starts, strict=True):
        lo, hi = max(offset + a, base), min(offset + b, base + rk.numel)
        if lo < hi:
            rk.copy_range(lo - base, hi - lo, out, lo - offset - a)
    return out


def _gather3(ranks: list[_Flat], offset: int, numel: int, piece: int, shape: tuple):
    return _range3(ranks, offset, numel, piece, 0, numel).view(shape)


def _range3(ranks: list[_Flat], offset: int, numel: int, piece: int, a: int, b: int) -> Any:
    """ZeRO-3: elements [a, b) of the parameter whose `piece` elements per rank start at
    `offset` in each rank's joined flat groups (rank r holds [r*piece, (r+1)*piece))."""
    import torch

    out = torch.empty(b - a, dtype=torch.float32)
    for r, rk in enumerate(ranks):
        lo, hi = max(a, r * piece), min(b, (r + 1) * piece, numel)
        if lo < hi:
            rk.copy_range(offset + lo - r * piece, hi - lo, out, lo - a)
    return out


def leaves(src: Path, opts: Options):
    """Consolidated (name, entry) pairs with shared aliases resolved to the same entry."""
    ckpt = ZeroCheckpoint(src, opts)
    entries, shared = ckpt.entries()
    by_name = dict(entries)
    for alias, source in shared.items():
        if source in by_name and alias not in by_name:
            entries.append((alias, by_name[source]))
    return ckpt, entries


def unsharded_optimizer(ckpt: ZeroCheckpoint, base_states: list[Any]
                        ) -> tuple[list[tuple[str, TensorEntry]], dict[str, Any]]:
    """ZeRO-1/2: the ranks' optimizer state (`base_optimizer_state` of each *_optim_states.pt,
    in rank order) as it is for the whole model, whatever the world size: each moment's flat
    partitions concatenated and cut per parameter exactly like the fp32 weights
    (`state.<param>.<moment>`), the per-group scalars (`step`) from rank 0 as
    `group_state.<i>.step` when every rank agrees (else per rank), and rank 0's param_groups.
    Returns (lazy tensor entries, plain values). ZeRO-3 (`base_states` each rank's torch
    optimizer state_dict): per parameter as well, by convert/zero3_state.py.
    """
    import torch

    if len(base_states) != ckpt.world:
        raise ValueError("unsharded_optimizer: one optimizer state per rank")
    if ckpt.stage == 3:
        from .zero3_state import read_state, unsharded

        shapes3 = [dict(g) for g in ckpt._shapes()]
        state = read_state(shapes3, ckpt.flat, base_states,
                           [Path(str(ckpt.tag))] * ckpt.world, fail)
        return unsharded(state, shapes3, base_states, str(ckpt.tag), _same_value)
    groups = ckpt._shapes()
    entries: list[tuple[str, TensorEntry]] = []
    values: dict[str, Any] = {}
    states = [b.get("state", {}) if isinstance(b, Mapping) else {} for b in base_states]
    for gi, shapes in enumerate(groups):
        per_rank = [s.get(gi, s.get(str(gi), {})) for s in states]
        names = sorted({k for st in per_rank for k in st})
        for moment in names:
            parts = [st.get(moment) for st in per_rank]
            if all(isinstance(p, torch.Tensor) and p.dim() == 1 and p.numel() > 1 for p in parts):
                ranks, starts, total = _joined(parts, [MAPPED.tensor_is_mapped(p) for p in parts])
                offset = 0
                for name, shape in shapes:
                    numel = math.prod(shape)
                    if offset + numel > total:
                        raise fail(ckpt.tag, f"group {gi}: {moment} partitions hold {total} "
                                             f"elements, the parameters need more")
                    key = f"state.{name}.{moment}"
                    entries.append((key, TensorEntry(
                        key, parts[0].dtype, shape,
                        functools.partial(_gather12_as, parts[0].dtype, ranks, starts, offset,
                                          numel, shape), str(ckpt.tag),
                        read=functools.partial(_range12, parts[0].dtype, ranks, starts,
                                               offset))))
                    offset += numel
            elif all(_same_value(p, parts[0]) for p in parts):
                p0 = parts[0]
                key = f"group_state.{gi}.{moment}"
                if isinstance(p0, torch.Tensor):
                    entries.append((key, TensorEntry(key, p0.dtype, tuple(p0.shape),
                                                     functools.partial(_same, p0),
                                                     str(ckpt.tag))))
                else:
                    values[key] = p0
            else:  # ranks disagree: keep each, the diff shows it
                for r, p in enumerate(parts):
                    values[f"rank{r}.state.{gi}.{moment}"] = p
    pg = base_states[0].get("param_groups") if isinstance(base_states[0], Mapping) else None
    if pg is not None:
        values["param_groups"] = pg
    return entries, values


def _same_value(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b
