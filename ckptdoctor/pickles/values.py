"""The symbolic values the scan's stack machine pushes (descriptions, never the objects), and
reading them: the tensors under a root, a literal at a key path, the top-level keys."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..model import TensorInfo
from .limits import DEFAULT_LIMITS, ScanLimits
from .tables import DTYPE_SIZES


class Mark:
    __slots__ = ()


MARK = Mark()


@dataclass(eq=False)
class Glob:
    name: str  # file spelling
    match: str  # torch spelling


@dataclass(eq=False)
class Obj:
    """The result of a call (REDUCE / NEWOBJ / INST / OBJ)."""

    type_name: str | None  # best static guess of type(result), torch spelling
    func: str | None
    args: Any = None
    items: list[Any] = field(default_factory=list)  # SETITEM(S) into a dict subclass
    state: Any = None  # BUILD argument


@dataclass(eq=False)
class Storage:
    key: str
    dtype: str
    itemsize: int
    location: str
    numel: int | None


@dataclass(eq=False)
class Tensor:
    storage: Storage | None
    offset: int
    shape: tuple[int, ...]
    parameter: bool = False
    dtype: str | None = None  # _rebuild_tensor_v3's dtype argument (UntypedStorage records)


class SymDict(list[Any]):
    """A dict literal: list of (key, value) pairs (keys may repeat or be unhashable)."""


class SymList(list[Any]):
    pass


class SymSet(list[Any]):
    pass


@dataclass(eq=False)
class Opaque:
    what: str



def collect_tensors(root: Any, limits: ScanLimits = DEFAULT_LIMITS) -> list[TensorInfo]:
    """Name every tensor under the symbolic root the way a state dict would (dotted keys)."""
    out: list[TensorInfo] = []
    seen: set[int] = set()
    todo: list[tuple[str, Any, int]] = [("", root, 0)]
    nodes = 0
    while todo:
        prefix, v, depth = todo.pop()
        nodes += 1
        if nodes > limits.max_walk_nodes or depth > limits.max_depth:
            break
        if isinstance(v, Tensor):
            st = v.storage
            dtype = v.dtype or (st.dtype if st else "unknown")
            n = math.prod(v.shape)
            out.append(TensorInfo(prefix or "<root>", dtype, v.shape, n * DTYPE_SIZES.get(dtype, 1),
                                  st.key if st else None, v.offset))
            continue
        if not isinstance(v, (SymDict, SymList, Obj, tuple)) or id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, SymDict):
            children = [(k, c) for k, c in v if isinstance(k, (str, int, bytes))]
        elif isinstance(v, (SymList, tuple)):
            children = list(enumerate(v))
        else:  # Obj: dict subclass items, BUILD state
            children = [(k, c) for k, c in v.items if isinstance(k, (str, int))]
            if isinstance(v.state, SymDict):
                children += [(k, c) for k, c in v.state if isinstance(k, (str, int))]
        for k, c in reversed(children):
            key = k.decode("latin-1") if isinstance(k, bytes) else k
            todo.append((f"{prefix}.{key}" if prefix else str(key), c, depth + 1))
    return out


def lookup(root: Any, *keys: str) -> Any:
    """Read a literal value out of a symbolic root: lookup(root, 'global_step')."""
    cur = root
    for key in keys:
        pairs = cur if isinstance(cur, SymDict) else (cur.items if isinstance(cur, Obj) else None)
        if pairs is None:
            return None
        for k, v in pairs:
            if k == key:
                cur = v
                break
        else:
            return None
    return cur


def top_keys(root: Any) -> list[str]:
    pairs = root if isinstance(root, SymDict) else (root.items if isinstance(root, Obj) else [])
    return [k for k, _ in pairs if isinstance(k, str)]
