"""The unpickler of the trusted load strategy (`--trust`): Python's own pure-Python
`pickle._Unpickler` whose `find_class` resolves only names that pass `policy.vet` and whose
BUILD refuses to set attributes on classes, modules or functions. torch.load gets it as
`pickle_module=`, so torch's storage handling is kept and the unpickler is never unrestricted."""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Callable
from typing import IO, Any

from ..standins import ModuleReached, import_dotted, numpy_location
from .policy import Verdict, allow_flags, vet


class RefusedGlobal(pickle.UnpicklingError):
    """The vetted unpickler met a name that did not pass policy.vet."""


# Python's pure-Python unpickler; its BUILD handler and dispatch table are not in typeshed
_PyUnpickler = pickle._Unpickler
_PY_LOAD_BUILD: Callable[[Any], None] = _PyUnpickler.load_build  # type: ignore[attr-defined]


def vetted_pickle_module(allow: tuple[str, ...] = ()) -> types.ModuleType:
    """A module to pass as torch.load(..., weights_only=False, pickle_module=...): its
    `Unpickler` is Python's, with a find_class that resolves only names passing
    policy.vet(name, allow) (torch defaults, reviewed data, `allow`), and never reaches a
    module object through an attribute."""
    allow = tuple(allow)

    class Unpickler(_PyUnpickler):  # Python's own, so BUILD can be restricted too
        dispatch = dict(_PyUnpickler.dispatch)
        stack: list[Any]  # the pure-Python unpickler's value stack

        def _load_build_on_instances(self: Any) -> None:  # a dispatch entry: any unpickler
            # BUILD on a class, module or function is setattr on shared code, not data: it is
            # how a pickle arms torch's legacy `dump_patches` file writer (security review).
            if isinstance(self.stack[-2], (type, types.ModuleType, types.FunctionType,
                                           types.BuiltinFunctionType)):
                raise RefusedGlobal("BUILD on a class, module or function (sets attributes "
                                    "of code, not of data); refused")
            _PY_LOAD_BUILD(self)

        dispatch[pickle.BUILD[0]] = _load_build_on_instances

        def find_class(self, module: str, name: str) -> Any:
            if not (isinstance(module, str) and isinstance(name, str)):
                raise RefusedGlobal("global with a non-string name refused")
            full = f"{module}.{name}"
            # Python's own Python-2 mapping (fix_imports); its names are not Python-3 modules,
            # so it is applied whatever the protocol, and both spellings must pass
            import _compat_pickle

            mod2, name2 = module, name
            if (module, name) in _compat_pickle.NAME_MAPPING:
                mod2, name2 = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                mod2 = _compat_pickle.IMPORT_MAPPING[module]
            full2 = f"{mod2}.{name2}"
            for candidate in dict.fromkeys((full, full2)):
                v = vet(candidate, allow)
                if not v.allowed:
                    why = ("code-executing global" if v.verdict is Verdict.DANGEROUS else
                           f"global of unknown safety (if you trust the file: "
                           f"{allow_flags([candidate])})")
                    raise RefusedGlobal(f"{candidate}: {why}; refused")
            try:
                return import_dotted(numpy_location(full2))
            except ModuleReached as exc:
                raise RefusedGlobal(str(exc)) from None

    def load(file: IO[bytes], **kw: Any) -> Any:
        return Unpickler(file, **kw).load()

    def loads(data: bytes, **kw: Any) -> Any:
        return Unpickler(io.BytesIO(data), **kw).load()

    mod = types.ModuleType("ckptdoctor_vetted_pickle",
                           "pickle, restricted to names that pass ckptdoctor.pickles.policy.vet")
    for name, value in (("Unpickler", Unpickler), ("load", load), ("loads", loads),
                        ("UnpicklingError", pickle.UnpicklingError)):
        setattr(mod, name, value)  # what torch.load uses of a pickle_module
    return mod


__all__ = ["RefusedGlobal", "vetted_pickle_module"]
