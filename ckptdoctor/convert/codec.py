"""Lossless JSON encoding of the non-tensor part of a checkpoint's object tree.

Plain JSON values stay themselves (str, int, bool, None, finite floats, lists, dicts with
string keys). Everything else becomes an object with one reserved key, "$t", naming the type:

  {"$t": "tuple", "v": [...]}           {"$t": "dict", "items": [[key, value], ...]}
  {"$t": "odict", "items": [...], "attrs": {...}}   (OrderedDict, with e.g. `_metadata`)
  {"$t": "float", "v": "nan"}           {"$t": "bytes", "b64": "..."}
  {"$t": "ndarray", "dtype": "<u4", "shape": [624], "b64": "..."}
  {"$t": "npscalar", "dtype": "<f8", "b64": "..."}     {"$t": "npdtype", "v": "<u4"}
  {"$t": "size" | "dtype" | "device", "v": ...}         {"$t": "path", "cls": ..., "v": ...}
  {"$t": "namespace", "v": {...}}       {"$t": "enum", "cls": "pkg.Enum", "v": ...}
  {"$t": "object", "cls": "deepspeed...LossScaler", "enum": false, "args": [...], "state": ...}
  {"$t": "dictsub", "cls": "...AttributeDict", "items": [...]}   (dict subclasses)
  {"$t": "instance", "cls": "pkg.Config", "state": {...}}  (plain-data classes, default pickling)
  {"$t": "tensor", "key": "<key in tensors.safetensors>", ...}  (written by the caller's hook)

A dict with a "$t" key, or with non-string keys, is written in the "items" form, so decoding
is unambiguous. Decoding never imports a module that the allow-list policy would not: enums
and loader stand-ins come back as the real class only when `standins.resolve_allowlist` would
give it (plain data), otherwise as stand-ins."""

from __future__ import annotations

import argparse
import base64
import enum
import math
import pathlib
import types
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

T = "$t"
SKIP = object()  # a decode hook's "not mine"
_FACTORIES = {"list": list, "dict": dict, "int": int, "float": float, "set": set, "str": str,
              "tuple": tuple, "None": None}


class CodecError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _float(v: float) -> Any:
    if math.isfinite(v):
        return v
    return {T: "float", "v": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}


def _join(path: str, key: Any) -> str:
    k = str(key).replace("~", "~0").replace("/", "~1")
    return f"{path}/{k}" if path else k


def encode(obj: Any, hook: Callable[[str, Any], Any] | None = None, path: str = "") -> Any:
    """JSON-able form of `obj`. `hook(path, value)` is asked first for every value; it returns
    a replacement (already JSON-able) or None to let encode continue (tensors must be
    handled by it)."""
    import numpy as np
    import torch

    from ..standins import EnumStandIn, StandIn

    if hook is not None:
        hooked = hook(path, obj)
        if hooked is not None:
            return hooked
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if type(obj) is int:
        return obj
    if type(obj) is float:
        return _float(obj)
    if isinstance(obj, torch.Tensor):
        raise CodecError(path, "tensor reached the JSON encoder")
    if type(obj) is list:
        return [encode(v, hook, _join(path, i)) for i, v in enumerate(obj)]
    if type(obj) is dict:
        if all(isinstance(k, str) for k in obj) and T not in obj:
            return {k: encode(v, hook, _join(path, k)) for k, v in obj.items()}
        return {T: "dict", "items": _items(obj, hook, path)}
    if type(obj) is OrderedDict:
        out: dict[str, Any] = {T: "odict", "items": _items(obj, hook, path)}
        attrs = vars(obj)
        if attrs:
            out["attrs"] = {k: encode(v, hook, _join(path, "@" + k)) for k, v in attrs.items()}
        return out
    if type(obj) is defaultdict:
        f = obj.default_factory
        fname = "None" if f is None else getattr(f, "__name__", "")
        if _FACTORIES.get(fname, 0) is not f:
            raise CodecError(path, f"defaultdict with factory {f!r} cannot be encoded")
        return {T: "defaultdict", "factory": fname, "items": _items(obj, hook, path)}
    if type(obj) is Counter:
        return {T: "counter", "items": _items(obj, hook, path)}
    if type(obj) is tuple:
        return {T: "tuple", "v": [encode(v, hook, _join(path, i)) for i, v in enumerate(obj)]}
    if type(obj) in (set, frozenset):
        return {T: type(obj).__name__, "v": [encode(v, hook, _join(path, i))
                                             for i, v in enumerate(_stable(obj))]}
    if type(obj) in (bytes, bytearray):
        return {T: type(obj).__name__, "b64": _b64(bytes(obj))}
    if type(obj) is complex:
        return {T: "complex", "v": [_float(obj.real), _float(obj.imag)]}
    if type(obj) is slice:
        return {T: "slice", "v": [encode(x, hook, path) for x in (obj.start, obj.stop, obj.step)]}
    if type(obj) is range:
        return {T: "range", "v": [obj.start, obj.stop, obj.step]}
    if isinstance(obj, torch.Size):
        return {T: "size", "v": list(obj)}
    if isinstance(obj, torch.dtype):
        return {T: "dtype", "v": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {T: "device", "v": str(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CodecError(path, "numpy object array cannot be encoded losslessly")
        if type(obj) is not np.ndarray:
            raise CodecError(path, f"numpy subclass {type(obj).__name__} cannot be encoded")
        arr = np.ascontiguousarray(obj)
        return {T: "ndarray", "dtype": _npdtype(arr.dtype), "shape": list(arr.shape),
                "b64": _b64(arr.tobytes())}
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            raise CodecError(path, "numpy object scalar cannot be encoded losslessly")
        return {T: "npscalar", "dtype": _npdtype(obj.dtype), "b64": _b64(obj.tobytes())}
    if isinstance(obj, np.dtype):
        return {T: "npdtype", "v": _npdtype(obj)}
    if type(obj) is argparse.Namespace:
        return {T: "namespace", "v": encode(vars(obj), hook, path)}
    if type(obj) is types.SimpleNamespace:
        return {T: "simplenamespace", "v": encode(vars(obj), hook, path)}
    if isinstance(obj, pathlib.PurePath):
        return {T: "path", "cls": type(obj).__name__, "v": str(obj)}
    if isinstance(obj, enum.Enum):
        cls = type(obj)
        return {T: "enum", "cls": f"{cls.__module__}.{cls.__qualname__}",
                "v": encode(obj.value, hook, path)}
    if isinstance(obj, dict):  # a dict subclass (Lightning's AttributeDict, ...)
        out = {T: "dictsub", "cls": _qualname(type(obj)), "items": _items(obj, hook, path)}
        inst_attrs = getattr(obj, "__dict__", None)
        if inst_attrs:
            out["attrs"] = {k: encode(v, hook, _join(path, "@" + k))
                            for k, v in inst_attrs.items()}
        return out
    if _plain_instance(obj):  # a plain-data class pickled the default way (dataclasses, ...)
        return {T: "instance", "cls": _qualname(type(obj)),
                "state": encode(dict(vars(obj)), hook, _join(path, "@state"))}
    if isinstance(obj, StandIn):
        out = {T: "object", "cls": obj.standin_name, "enum": isinstance(obj, EnumStandIn),
               "args": [encode(a, hook, _join(path, f"@arg{i}")) for i, a in enumerate(obj.args)]}
        if obj.kwargs:
            out["kwargs"] = encode(dict(obj.kwargs), hook, _join(path, "@kwargs"))
        if obj.state is not None:
            out["state"] = encode(obj.state, hook, _join(path, "@state"))
        return out
    raise CodecError(path, f"{type(obj).__module__}.{type(obj).__qualname__} cannot be encoded "
                           "losslessly as JSON")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# object.__getstate__ exists from Python 3.11; before, a class without one has none at all
_OBJECT_GETSTATE = getattr(object, "__getstate__", None)


def _plain_instance(obj: Any) -> bool:
    """An instance the allow-list policy calls plain data, pickled as NEWOBJ + BUILD(__dict__):
    rebuilding it as cls.__new__(cls) + __dict__ update is what unpickling does too."""
    from ..pickles.policy import Verdict, vet
    from ..standins import StandIn

    cls = type(obj)
    if isinstance(obj, StandIn) or not hasattr(obj, "__dict__") or hasattr(cls, "__slots__"):
        return False
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        return False
    if getattr(cls, "__getstate__", _OBJECT_GETSTATE) is not _OBJECT_GETSTATE \
            or hasattr(cls, "__setstate__"):
        return False
    return vet(_qualname(cls)).verdict is Verdict.DATA


def _stable(values: Any) -> list:
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def _items(mapping: Any, hook: Any, path: str) -> list:
    return [[encode(k, None, path), encode(v, hook, _join(path, k))] for k, v in mapping.items()]


def _npdtype(dt: Any) -> Any:
    return dt.descr if dt.fields else dt.str


def decode(doc: Any, hook: Callable[[dict], Any] | None = None) -> Any:
    """Inverse of encode. `hook(obj)` is asked for every "$t" object first (the caller's
    tensor markers); it returns the value, or SKIP."""
    if isinstance(doc, list):
        return [decode(v, hook) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if T not in doc:
        return {k: decode(v, hook) for k, v in doc.items()}
    if hook is not None:
        out = hook(doc)
        if out is not SKIP:
            return out
    kind = doc[T]
    if kind == "float":
        return float(doc["v"])
    if kind == "dict":
        return {_hashable(decode(k, hook)): decode(v, hook) for k, v in doc["items"]}
    if kind == "odict":
        od = OrderedDict((_hashable(decode(k, hook)), decode(v, hook)) for k, v in doc["items"])
        for k, v in (doc.get("attrs") or {}).items():
            setattr(od, k, decode(v, hook))
        return od
    if kind == "defaultdict":
        dd: defaultdict[Any, Any] = defaultdict(_FACTORIES[doc["factory"]])
        dd.update((_hashable(decode(k, hook)), decode(v, hook)) for k, v in doc["items"])
        return dd
    if kind == "counter":
        return Counter({_hashable(decode(k, hook)): decode(v, hook) for k, v in doc["items"]})
    if kind == "tuple":
        return tuple(decode(v, hook) for v in doc["v"])
    if kind in ("set", "frozenset"):
        items = [_hashable(decode(v, hook)) for v in doc["v"]]
        return set(items) if kind == "set" else frozenset(items)
    if kind in ("bytes", "bytearray"):
        raw = _unb64(doc["b64"])
        return raw if kind == "bytes" else bytearray(raw)
    if kind == "complex":
        re_, im = (float(x) if isinstance(x, (int, float)) else decode(x) for x in doc["v"])
        return complex(re_, im)
    if kind == "slice":
        return slice(*(decode(x, hook) for x in doc["v"]))
    if kind == "range":
        return range(*doc["v"])
    if kind in ("size", "dtype", "device"):
        import torch

        if kind == "size":
            return torch.Size(doc["v"])
        if kind == "dtype":
            dt = getattr(torch, doc["v"], None)
            if not isinstance(dt, torch.dtype):
                raise CodecError("", f"unknown torch dtype {doc['v']!r}")
            return dt
        return torch.device(doc["v"])
    if kind in ("ndarray", "npscalar", "npdtype"):
        import numpy as np

        if kind == "npdtype":
            return np.dtype(_descr(doc["v"]))
        dt = np.dtype(_descr(doc["dtype"]))
        raw = _unb64(doc["b64"])
        if kind == "npscalar":
            return np.frombuffer(raw, dtype=dt, count=1)[0]
        return np.frombuffer(bytearray(raw), dtype=dt).reshape(doc["shape"])
    if kind == "namespace":
        return argparse.Namespace(**decode(doc["v"], hook))
    if kind == "simplenamespace":
        return types.SimpleNamespace(**decode(doc["v"], hook))
    if kind == "path":
        cls = getattr(pathlib, doc["cls"], None)
        if not (isinstance(cls, type) and issubclass(cls, pathlib.PurePath)):
            raise CodecError("", f"unknown path class {doc['cls']!r}")
        try:
            return cls(doc["v"])
        except NotImplementedError:  # e.g. WindowsPath on Linux
            return pathlib.PureWindowsPath(doc["v"]) if "Windows" in doc["cls"] else \
                pathlib.PurePosixPath(doc["v"])
    if kind == "enum":
        cls = _resolve(doc["cls"], enum_=True)
        value = decode(doc["v"], hook)
        return cls(value)
    if kind == "dictsub":
        cls = _resolve(doc["cls"], enum_=False)
        items = [(_hashable(decode(k, hook)), decode(v, hook)) for k, v in doc["items"]]
        if isinstance(cls, type) and issubclass(cls, dict) and not _is_standin_cls(cls):
            obj = cls.__new__(cls)
            dict.update(obj, items)
        else:  # the class is not available here: its items as a plain dict
            obj = dict(items)
        for k, v in (doc.get("attrs") or {}).items():
            if hasattr(obj, "__dict__"):
                obj.__dict__[k] = decode(v, hook)
        return obj
    if kind == "instance":
        cls = _resolve(doc["cls"], enum_=False)
        state = decode(doc["state"], hook)
        obj = cls.__new__(cls)
        if _is_standin_cls(cls):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
        return obj
    if kind == "object":
        from ..standins import standin_for

        cls = standin_for(doc["cls"], bool(doc.get("enum")))
        obj = cls.__new__(cls, *[decode(a, hook) for a in doc.get("args", [])],
                          **decode(doc.get("kwargs") or {}, hook))
        if "state" in doc:
            obj.__setstate__(decode(doc["state"], hook))
        return obj
    raise CodecError("", f"unknown encoded type {kind!r}")


def _is_standin_cls(cls: Any) -> bool:
    from ..standins import StandIn

    return isinstance(cls, type) and issubclass(cls, StandIn)


def _descr(v: Any) -> Any:
    if isinstance(v, list):
        return [tuple(_descr(x) if isinstance(x, list) else x for x in field) for field in v]
    return v


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def _resolve(name: str, enum_: bool) -> Any:
    """The real class when the allow-list policy resolves it (plain data), else a stand-in."""
    from ..standins import AllowListError, resolve_allowlist, standin_for

    try:
        resolved = resolve_allowlist([name])
    except AllowListError:
        return standin_for(name, enum_)
    return resolved[0][0] if resolved else standin_for(name, enum_)


# --- equality ---------------------------------------------------------------------------------
def deep_equal(a: Any, b: Any, tensor_eq: Callable[[Any, Any], bool] | None = None,
               path: str = "") -> str | None:
    """None when equal (tensors: same dtype, shape and bytes; numpy: same dtype and values;
    floats: NaN equals NaN; stand-ins: same name, args and state), else where they differ."""
    import numpy as np
    import torch

    from ..standins import StandIn

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return path or "<root>"
        if tensor_eq is not None:
            return None if tensor_eq(a, b) else (path or "<root>")
        ok = a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8) if a.numel() else a,
            b.contiguous().reshape(-1).view(torch.uint8) if b.numel() else b)
        return None if ok else (path or "<root>")
    if type(a) is not type(b):
        return f"{path or '<root>'} ({type(a).__name__} vs {type(b).__name__})"
    if isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return None if same else (path or "<root>")
    if isinstance(a, np.generic):
        return None if (a.dtype == b.dtype and a.tobytes() == b.tobytes()) else (path or "<root>")
    if isinstance(a, float):
        same = (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
        return None if same else (path or "<root>")
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return f"{path or '<root>'} (keys differ)"
        for k in a:
            d = deep_equal(a[k], b[k], tensor_eq, _join(path, k))
            if d:
                return d
        if vars(a) if hasattr(a, "__dict__") else False:
            return deep_equal(vars(a), vars(b), tensor_eq, _join(path, "@attrs"))
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path or '<root>'} (lengths differ)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = deep_equal(x, y, tensor_eq, _join(path, i))
            if d:
                return d
        return None
    if isinstance(a, (argparse.Namespace, types.SimpleNamespace)):
        return deep_equal(vars(a), vars(b), tensor_eq, path)
    if isinstance(a, StandIn):
        if a.standin_name != b.standin_name:
            return path or "<root>"
        return (deep_equal(list(a.args), list(b.args), tensor_eq, _join(path, "@args"))
                or deep_equal(dict(a.kwargs), dict(b.kwargs), tensor_eq, _join(path, "@kwargs"))
                or deep_equal(a.state, b.state, tensor_eq, _join(path, "@state")))
    if type(a).__eq__ is object.__eq__ and hasattr(a, "__dict__"):
        return deep_equal(vars(a), vars(b), tensor_eq, _join(path, "@state"))
    try:
        return None if a == b else (path or "<root>")
    except Exception:  # exotic __eq__
        return path or "<root>"
