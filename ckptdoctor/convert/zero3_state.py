"""A DeepSpeed ZeRO-3 checkpoint's trained state per parameter, whatever the world size: the one
place that knows how ZeRO-3 lays each parameter out over the ranks. `reshard` re-splits from it
(reshard_zero3.py) and `diff` compares from it (diff/sides.py via deepspeed_read.py), so a
ZeRO-3 checkpoint and its reshard to another world size line up key for key.

The layout (runtime/zero/partition_parameters.py and stage3.py, checked against 0.19; the rule
of `zero3_partitioned_param_info` in utils/zero_to_fp32.py): with world size W a parameter of n
elements has pn = ceil(n / W) elements on each rank; rank r holds elements [r*pn, (r+1)*pn) of
the flattened parameter, the last rank(s) padded at the end. Rank r's `fp32_flat_groups[s]`
(its `*_optim_states.pt`) is its partitions of sub-group s's parameters one after the other, in
`param_shapes[s]` order; the torch optimizer's state for sub-group s (`exp_avg`, `exp_avg_sq`,
SGD's `momentum_buffer`, ... any 1-D tensor of the flat group's size) is laid out the same way.
Anything else in a sub-group's state (`step`) is one value per sub-group ("scalars")."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MAPPED, TensorEntry, release_tensor, tensor_entry


def part_numel(numel: int, world: int) -> int:
    """Elements of one parameter on each rank (DeepSpeed: ceil(numel / world))."""
    return -(-numel // world)


class Param:
    """One parameter's values of one kind (fp32 weights, or one optimizer moment) as the
    ranks hold them: rank q's slice is elements [q*pn, (q+1)*pn) of the flat parameter."""

    def __init__(self, pieces: list[Any], numel: int):
        MAPPED.refresh()
        self.pieces = pieces  # one 1-D view per rank, pn elements each
        self.mapped = [MAPPED.tensor_is_mapped(p) for p in pieces]
        self.numel = numel
        self.pn = pieces[0].numel()

    @property
    def dtype(self) -> Any:
        return self.pieces[0].dtype

    def read(self, a: int, b: int, out: Any) -> None:
        """Elements [a, b) of the flat parameter into out[:b-a]; zeros past the end. The
        source pages read are dropped."""
        out[:b - a].zero_()
        for q, (p, mapped) in enumerate(zip(self.pieces, self.mapped, strict=True)):
            lo, hi = max(a, q * self.pn), min(b, (q + 1) * self.pn, self.numel)
            if lo < hi:
                src = p[lo - q * self.pn:hi - q * self.pn]
                out[lo - a:hi - a] = src
                release_tensor(src, mapped)

    def range(self, a: int, b: int) -> Any:
        """Elements [a, b) as a new tensor."""
        import torch

        out = torch.empty(b - a, dtype=self.dtype)
        self.read(a, b, out)
        return out

    def whole(self, shape: tuple[int, ...]) -> Any:
        return self.range(0, self.numel).view(shape)


@dataclass
class Zero3State:
    """Per parameter: `numel`, `shape`, and its values of each kind (`sources[kind][name]`,
    kind "fp32" or a moment's name); per old sub-group, the moments it holds and its other
    state (`scalars[s]`, e.g. `step`)."""

    numel: dict[str, int] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, Param]] = field(default_factory=lambda: {"fp32": {}})
    moments: dict[int, set[str]] = field(default_factory=dict)
    scalars: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        """"fp32" first, then the moments, sorted."""
        return ["fp32"] + sorted(k for k in self.sources if k != "fp32")


def read_state(shapes: Sequence[Mapping], flats: Sequence[Sequence[Any]],
               inners: Sequence[Mapping], files: Sequence[Path],
               err: Callable[[Any, str], Exception]) -> Zero3State:
    """The per-parameter state of a ZeRO-3 save on len(flats) ranks: `shapes` the model
    states' `param_shapes` (one mapping per sub-group), `flats[q][s]` rank q's fp32 flat
    group s, `inners[q]` rank q's torch optimizer state_dict, `files` the optimizer files (for
    messages). `err(where, message)` makes the exception raised for a layout that does not add
    up or a state that is not flat per partition (a factored moment)."""
    import torch

    world = len(flats)
    out = Zero3State()
    for s, group_shapes in enumerate(shapes):
        names = list(group_shapes)
        for name, shp in group_shapes.items():
            out.numel[name] = int(torch.Size(shp).numel())
            out.shape[name] = shp
        pns = [part_numel(out.numel[n], world) for n in names]
        for q in range(world):
            if flats[q][s].numel() != sum(pns):
                raise err(files[q], f"sub-group {s}: fp32 partition holds "
                                    f"{flats[q][s].numel()} elements, the parameters' "
                                    f"partitions {sum(pns)}")
        offs = [sum(pns[:k]) for k in range(len(names))]
        for name, off, pn in zip(names, offs, pns, strict=True):
            out.sources["fp32"][name] = Param([flats[q][s].reshape(-1)[off:off + pn]
                                               for q in range(world)], out.numel[name])
        st0 = inners[0]["state"].get(s, {})
        out.moments[s], out.scalars[s] = set(), {}
        for key, v in st0.items():
            if isinstance(v, torch.Tensor) and v.dim() == 1 and all(
                    isinstance(inners[q]["state"].get(s, {}).get(key), torch.Tensor)
                    and inners[q]["state"][s][key].numel() == flats[q][s].numel()
                    for q in range(world)):
                out.moments[s].add(key)
                for name, off, pn in zip(names, offs, pns, strict=True):
                    out.sources.setdefault(key, {})[name] = Param(
                        [inners[q]["state"][s][key].reshape(-1)[off:off + pn]
                         for q in range(world)], out.numel[name])
            elif isinstance(v, torch.Tensor) and v.numel() > 1:
                raise err(files[0], f"sub-group {s} optimizer state {key!r} "
                                    f"{tuple(v.shape)} is not a flat partition "
                                    "(factored state?): it cannot be re-split")
            else:
                out.scalars[s][key] = v
    if any(out.moments[s] != set(out.kinds[1:]) for s in out.moments if out.moments[s]):
        raise err(files[0], "sub-groups hold different optimizer moments: not supported")
    return out


def unsharded(state: Zero3State, shapes: Sequence[Mapping], inners: Sequence[Mapping],
              origin: str, same: Callable[[Any, Any], bool]
              ) -> tuple[list[tuple[str, TensorEntry]], dict[str, Any]]:
    """The optimizer state as the diff compares it, the same for any world size: every
    moment per parameter (`state.<param>.<moment>`, a lazy entry that also reads ranges), a
    param group's other state (`step`) as `group_state.<g>.<key>` when all its sub-groups and
    ranks agree (else `rank<q>.state.<s>.<key>`: the layout shows), and rank 0's param_groups
    with each group's sub-group ids replaced by its parameters' names."""
    import torch

    entries: list[tuple[str, TensorEntry]] = []
    values: dict[str, Any] = {}
    for kind in state.kinds[1:]:
        for name, p in state.sources[kind].items():
            key = f"state.{name}.{kind}"
            shape = tuple(int(d) for d in state.shape[name])
            entries.append((key, TensorEntry(key, p.dtype, shape,
                                             functools.partial(p.whole, shape), origin,
                                             read=p.range)))
    groups = list(inners[0].get("param_groups") or [])
    owner = {s: g for g, pg in enumerate(groups) for s in pg.get("params", [])}
    for g in range(len(groups)):
        subs = [s for s in sorted(state.scalars) if owner.get(s) == g]
        for key in sorted({k for s in subs for k in state.scalars[s]}):
            per = [inners[q]["state"].get(s, {}).get(key) for q in range(len(inners))
                   for s in subs]
            if per and all(same(v, per[0]) for v in per):
                if isinstance(per[0], torch.Tensor):
                    entries.append((f"group_state.{g}.{key}",
                                    tensor_entry(f"group_state.{g}.{key}", per[0], origin)))
                else:
                    values[f"group_state.{g}.{key}"] = per[0]
            else:
                for q in range(len(inners)):
                    for s in subs:
                        values[f"rank{q}.state.{s}.{key}"] = \
                            inners[q]["state"].get(s, {}).get(key)
    orphans = sorted(s for s in state.scalars if s not in owner and state.scalars[s])
    for s in orphans:
        for q in range(len(inners)):
            for key in state.scalars[s]:
                values[f"rank{q}.state.{s}.{key}"] = inners[q]["state"].get(s, {}).get(key)
    if groups:
        values["param_groups"] = [
            {**pg, "params": [n for s in pg.get("params", []) for n in
                              (shapes[s] if isinstance(s, int) and s < len(shapes) else [s])]}
            for pg in groups]
    return entries, values


__all__ = ["Param", "Zero3State", "part_numel", "read_state", "unsharded"]
