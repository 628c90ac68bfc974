"""`Converter`: one walk over a transcoded object that applies the rules (repair/rules.py),
rebuilds containers, and records each change, the RNG states to re-check by drawing from them
and the sidecar files to write; `leftover_captures` lists what no rule converted."""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from typing import Any

from ..standins import DTypeCapture, NDArrayCapture, ScalarCapture, StandIn
from .model import Change
from .rulebase import (
    Ctx,
    Kept,
    RngSite,
    Rule,
    class_ref_name,
    describe_found,
    describe_value,
    render_path,
)
from .rules import RULES, vouched_enum_kind
from .transcode import Marks


# --- the walk ------------------------------------------------------------------------------------
def _is_atomic(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, bytearray)):
        return True
    import torch

    return isinstance(v, (torch.Tensor, torch.dtype, torch.device, torch.Size, torch.layout,
                          torch.memory_format, torch.qscheme, torch.storage.TypedStorage,
                          torch.UntypedStorage))


_TORCH_RNG_BYTES = 5056  # torch.get_rng_state() of the CPU MT19937 generator


class Converter:
    """One file's conversion: `convert(obj)` returns the object to save."""

    def __init__(self, rel: str = "", flavor: str = "torch", allow: frozenset[str] = frozenset(),
                 marks: Marks | None = None, file_stem: str = "checkpoint",
                 rules: tuple[Rule, ...] = RULES):
        self.rel = rel
        self.flavor = flavor
        self.allow = frozenset(allow)
        self.marks = marks
        self.file_stem = file_stem
        self.rules = rules
        self.changes: list[Change] = []
        self.rng: list[RngSite] = []
        self.sidecars: dict[str, bytes] = {}
        self.kept_names: set[str] = set()
        self._memo: dict[int, tuple[Any, Any]] = {}
        self._enum_kinds: dict[str, str | None] = {}

    def enum_kind(self, name: str) -> str | None:
        if name not in self._enum_kinds:
            self._enum_kinds[name] = vouched_enum_kind(name)
        return self._enum_kinds[name]

    def convert(self, obj: Any) -> Any:
        return self.walk(obj, Ctx(self))

    def walk(self, v: Any, ctx: Ctx) -> Any:
        if _is_atomic(v):
            self._note_atomic(v, ctx)
            return v
        hit = self._memo.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        for rule in self.rules:
            if rule.matches(v, ctx):
                out = rule.convert(v, ctx)
                self._memo[id(v)] = (v, out)
                self._record(rule, v, out, ctx)
                return out
        return self._container(v, ctx)

    def _record(self, rule: Rule, v: Any, out: Any, ctx: Ctx) -> None:
        if isinstance(out, Kept):
            self.kept_names.add(out.name)
        self.changes.append(Change(render_path(ctx.path), describe_found(v, ctx), rule.name,
                                   describe_value(out), rule.why, rule.keep))

    def _container(self, v: Any, ctx: Ctx) -> Any:
        t = type(v)
        if t in (dict, OrderedDict, Counter):
            new: Any = t()  # the rebuilt container, of the original's type
            self._memo[id(v)] = (v, new)
            for k, x in v.items():
                new[self.walk(k, Ctx(self, ctx.path + ("<key>",), ctx.inside))] = \
                    self.walk(x, Ctx(self, ctx.path + (k,), ctx.inside))
            extra = getattr(v, "__dict__", None)
            if extra:  # OrderedDict attributes, e.g. a state_dict's _metadata
                new.__dict__.update(self.walk(dict(extra), ctx))
            return new
        if t is list:
            items: list[Any] = []
            self._memo[id(v)] = (v, items)
            items.extend(self.walk(x, Ctx(self, ctx.path + (i,), ctx.inside))
                       for i, x in enumerate(v))
            return items
        if t is tuple:
            self._note_python_rng(v, ctx)
            new = tuple(self.walk(x, Ctx(self, ctx.path + (i,), ctx.inside))
                        for i, x in enumerate(v))
            self._memo[id(v)] = (v, new)
            return new
        if t in (set, frozenset):
            new = t(self.walk(x, ctx) for x in v)
            self._memo[id(v)] = (v, new)
            return new
        return v  # nothing a rule knows; verification reports it if it cannot be saved

    def _note_atomic(self, v: Any, ctx: Ctx) -> None:
        import torch

        if (isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1
                and v.numel() == _TORCH_RNG_BYTES and not v.is_meta):
            self.rng.append(RngSite("torch", ctx.path, v))

    def _note_python_rng(self, v: tuple, ctx: Ctx) -> None:
        if (len(v) == 3 and v[0] == 3 and type(v[1]) is tuple and len(v[1]) == 625
                and (v[2] is None or isinstance(v[2], float))):
            self.rng.append(RngSite("python", ctx.path, v))


def leftover_captures(obj: Any, limit: int = 5) -> list[str]:
    """Captures still in a converted object (a rule gap): they must never be saved."""
    found: list[str] = []
    seen: set[int] = set()

    def visit(v: Any, path: tuple) -> None:
        if len(found) >= limit or id(v) in seen or _is_atomic(v):
            return
        seen.add(id(v))
        if isinstance(v, (StandIn, NDArrayCapture, ScalarCapture, DTypeCapture)) or \
                class_ref_name(v):
            found.append(f"{render_path(path)}: {describe_found(v)}")
            return
        if isinstance(v, Kept):
            for i, a in enumerate(v.args):
                visit(a, path + (i,))
            visit(v.state, path)
        elif isinstance(v, dict):
            for k, x in v.items():
                visit(k, path + ("<key>",))
                visit(x, path + (k,))
            visit(getattr(v, "__dict__", None), path)
        elif isinstance(v, (list, tuple, set, frozenset)):
            for i, x in enumerate(v):
                visit(x, path + (i,))

    visit(obj, ())
    return found


def floats_equal(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


__all__ = ["Converter", "leftover_captures", "floats_equal"]
