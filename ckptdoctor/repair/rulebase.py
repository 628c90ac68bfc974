"""What the rewrite rules are made of: the `Rule` type, the walk's context (`Ctx`: key path,
the file's flavour, the enclosing objects), `Kept` markers for objects re-pickled as they were,
RNG sites to re-check, and the helpers rules share (names of captured values, descriptions)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..standins import (
    DTypeCapture,
    EnumStandIn,
    NDArrayCapture,
    ScalarCapture,
    StandIn,
    reconstruct_shim,
)
from .model import Change
from .transcode import Marks, via_reduce


# --- kept objects --------------------------------------------------------------------------------
@dataclass(eq=False)
class Kept:
    """An object saved again exactly as it was: GLOBAL name, args, REDUCE/NEWOBJ, BUILD state
    (args and state converted by the rules like everything else). See pickler.py."""

    name: str
    args: tuple = ()
    state: Any = None
    via_reduce: bool = False
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<kept {self.name}>"


@dataclass(frozen=True)
class RngSite:
    """An RNG state to check by drawing from it: kind numpy|python|torch, where it sits in the
    converted object, and the original value (numpy: a real state tuple rebuilt from the
    capture)."""

    kind: str
    path: tuple
    original: Any


class Walker(Protocol):
    """What a rule sees of the walk that applies it (walk.Converter): the file's flavour and
    vouched names, where to record changes, RNG sites and sidecars, and how to go deeper."""
    flavor: str
    allow: frozenset[str]
    marks: Marks | None
    file_stem: str
    changes: list[Change]
    rng: list[RngSite]
    sidecars: dict[str, bytes]

    def enum_kind(self, name: str) -> str | None: ...

    def walk(self, v: Any, ctx: Ctx) -> Any: ...


# --- context -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ctx:
    conv: Walker
    path: tuple = ()
    inside: tuple[str, ...] = ()  # global names of the enclosing captured objects

    @property
    def key(self) -> Any:
        return self.path[-1] if self.path else None

    @property
    def flavor(self) -> str:
        return self.conv.flavor

    @property
    def allow(self) -> frozenset[str]:
        return self.conv.allow

    def walk(self, value: Any, *keys: Any, inside: str | None = None) -> Any:
        return self.conv.walk(value, Ctx(self.conv, self.path + keys,
                                         self.inside + ((inside,) if inside else ())))


def render_path(path: tuple) -> str:
    if not path:
        return "<root>"
    out = ""
    for i, k in enumerate(path):
        if isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w\-]*", k):
            out += k if i == 0 else f".{k}"
        elif isinstance(k, int) and not isinstance(k, bool):
            out += f"[{k}]"
        else:
            out += f"[{k!r}]"
    return out


# --- helpers -------------------------------------------------------------------------------------
def name_of(v: Any) -> str | None:
    """The global a captured value stands for (instances and class references)."""
    if isinstance(v, StandIn):
        return type(v).standin_name
    if isinstance(v, NDArrayCapture):
        return "numpy.ndarray"
    if isinstance(v, ScalarCapture):
        return "numpy.core.multiarray.scalar"
    if isinstance(v, DTypeCapture):
        return "numpy.dtype"
    return None


def class_ref_name(v: Any) -> str | None:
    """Dotted name when `v` is a captured class object (not an instance), e.g. hparams_type."""
    if v is reconstruct_shim:
        return "numpy.core.multiarray._reconstruct"
    if isinstance(v, type):
        standin_name = getattr(v, "standin_name", None)
        if standin_name:
            return str(standin_name)
        return {DTypeCapture: "numpy.dtype", NDArrayCapture: "numpy.ndarray",
                ScalarCapture: "numpy.core.multiarray.scalar"}.get(v)
    return None


def _prim(v: Any) -> Any:
    return v.to_primitive() if isinstance(v, ScalarCapture) else v


def _is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, complex, str, bytes))


def state_dict_of(v: StandIn) -> dict:
    """A stand-in's attributes: its BUILD state (dict, or (dict, slotstate)) as one dict."""
    st = v.state
    if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
        merged = dict(st[0] or {})
        merged.update(st[1] or {})
        return merged
    return dict(st) if isinstance(st, dict) else {}


def _enum_shaped(v: Any) -> bool:
    """REDUCE(cls, (value,)) with nothing else: how an Enum member pickles."""
    if isinstance(v, EnumStandIn):
        return True
    return (isinstance(v, StandIn) and via_reduce(v) and len(v.args) == 1 and not v.kwargs
            and v.state is None and isinstance(v.args[0], (int, str)))


def keep(v: Any, ctx: Ctx) -> Kept:
    """Keep a stand-in: same global, same construction, args/state converted by the rules."""
    name = name_of(v) or "?"
    args = tuple(ctx.walk(a, "<args>", i, inside=name) for i, a in enumerate(v.args))
    state = None if v.state is None else ctx.walk(v.state, inside=name)
    kwargs = {k: ctx.walk(x, k, inside=name) for k, x in v.kwargs.items()}
    return Kept(name, args, state, via_reduce(v), kwargs)


def describe_found(v: Any, ctx: Ctx | None = None) -> str:
    if isinstance(v, tuple) and v and v[0] == "MT19937":
        return "numpy RNG state (numpy.ndarray <u4 (624,) via _reconstruct/dtype)"
    if isinstance(v, NDArrayCapture):
        dt = v.dtype.to_primitive() if v.dtype is not None else "?"
        sub = "" if v.subtype == "numpy.ndarray" else f" ({v.subtype})"
        return f"numpy.ndarray{sub} {dt} {tuple(v.shape)}"
    if isinstance(v, ScalarCapture):
        return f"numpy scalar {v.dtype.to_primitive()}"
    if isinstance(v, DTypeCapture):
        return f"numpy.dtype {v.to_primitive()}"
    if ctx is not None:
        mark = ctx.conv.marks.get(v) if ctx.conv.marks else None
        if mark is not None:
            return mark.name
    ref = class_ref_name(v)
    if ref:
        return f"class {ref}"
    n = name_of(v)
    if n:
        return n
    return type(v).__name__


def describe_value(v: Any) -> str:
    import torch

    if isinstance(v, Kept):
        return "kept, allow-listed"
    if isinstance(v, torch.Tensor):
        return f"tensor {str(v.dtype).removeprefix('torch.')} {tuple(v.shape)}"
    if isinstance(v, tuple) and len(v) == 5 and v[0] == "MT19937":
        return f"('MT19937', list of {len(v[1])} ints, pos, has_gauss, cached_gaussian)"
    if isinstance(v, list):
        kinds = sorted({type(x).__name__ for x in v})
        return f"list of {len(v)} {'/'.join(kinds) or 'items'}"
    if isinstance(v, dict):
        return f"dict ({len(v)} keys)"
    if isinstance(v, set):
        return f"set ({len(v)} items)"
    if v is None:
        return "None"
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


# --- the rule type ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    name: str
    why: str
    matches: Callable[[Any, Ctx], bool]
    convert: Callable[[Any, Ctx], Any]
    keep: bool = False
    # UNKNOWN globals this rule consumes (prefixes), acceptable without --allow when one of
    # `trigger` (prefixes) is in the same file: the rule drops or converts them itself.
    covers: tuple[str, ...] = ()
    trigger: tuple[str, ...] = ()


__all__ = ["Rule", "Ctx", "Kept", "RngSite", "name_of", "class_ref_name", "render_path",
           "describe_found", "describe_value", "keep", "state_dict_of"]
