"""torch.save for converted objects, including `Kept` ones.

A kept object is written back the way the original pickle built it: `GLOBAL module name`,
its (converted) arguments, REDUCE or NEWOBJ, then its state and BUILD, all in protocol 2 (the
only protocol torch's weights-only unpickler reads). Its class is never imported: the name is
written as text. Files without kept objects use torch.save's own pickler unchanged."""

from __future__ import annotations

import pickle
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .rulebase import Kept


class _KeptPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is ours
    # typeshed types _Pickler.dispatch with the Unpickler's signature; ours holds save methods
    dispatch: ClassVar[dict[type, Callable[[Any, Any], None]]] = dict(
        pickle._Pickler.dispatch)
    # the pure-Python pickler's internals, not in typeshed
    write: Callable[[bytes], Any]
    save: Callable[[Any], None]
    memoize: Callable[[Any], None]

    def save_kept(self, obj: Kept) -> None:
        if obj.kwargs:
            raise pickle.PicklingError(f"cannot re-pickle {obj.name} with keyword arguments")
        module, _, qual = obj.name.rpartition(".")
        if not module or "\n" in obj.name:
            raise pickle.PicklingError(f"bad global name {obj.name!r}")
        self.write(pickle.GLOBAL + module.encode("utf-8") + b"\n" + qual.encode("utf-8")
                   + b"\n")
        self.save(tuple(obj.args))
        self.write(pickle.REDUCE if obj.via_reduce else pickle.NEWOBJ)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Kept] = save_kept


KEPT_PICKLE_MODULE = types.SimpleNamespace(Pickler=_KeptPickler, Unpickler=pickle.Unpickler,
                                           __name__="ckptdoctor.repair.pickler")


def contains_kept(obj: Any) -> bool:
    seen: set[int] = set()
    stack = [obj]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, Kept):
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
            if getattr(v, "__dict__", None):
                stack.append(v.__dict__)
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
    return False


def save(obj: Any, path: Path) -> None:
    """torch.save with the default protocol (2) and zip format; kept objects re-pickled."""
    import torch

    if contains_kept(obj):
        torch.save(obj, path, pickle_module=KEPT_PICKLE_MODULE)
    else:
        torch.save(obj, path)


__all__ = ["save", "contains_kept", "KEPT_PICKLE_MODULE"]
