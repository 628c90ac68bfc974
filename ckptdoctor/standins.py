"""Objects to register with `torch.serialization.safe_globals`, real or stand-in.

torch's weights-only unpickler looks a pickled global up by its dotted name in the registered
`(obj, "dotted.name")` tuples. Two ways to fill that table:

* `resolve_allowlist(names)`: the REAL objects, for loads whose result a program keeps using.
  A module is imported only for names the policy classes as plain DATA or that the user vouched
  for (--allow); numpy-1 spellings (`numpy.core.*`) are aliased to numpy 2's `numpy._core.*`
  (and back). A name whose module is not installed (deepspeed, omegaconf, megatron on an
  inspection machine) gets a stand-in, so its file still loads.
* `transcoding_globals(names)`: stand-ins only, never a real import, for the repair engine,
  which loads a file, converts what the stand-ins captured to primitives and saves it again.

How torch's unpickler builds objects, and so what stand-ins must accept:
  REDUCE  func(*args)                    (numpy _reconstruct/scalar/dtype calls, enums, Path)
  NEWOBJ  cls.__new__(cls, *args)        (plain classes pickled with protocol 2)
  BUILD   inst.__setstate__(state)       (only for types registered in the table)

Capture objects (all attributes are plain Python values or other captures):
  StandIn        .standin_name, .args (tuple), .kwargs (dict), .state (BUILD state or None)
  EnumStandIn    StandIn + .value (the enum's value, from the `Enum(value)` call)
  DTypeCapture   .code ('u4', 'f8', 'V20', 'M8', ...), .align, .copy, .state (numpy's dtype
                 BUILD state: (version, byteorder, subarray, names, fields, elsize, alignment,
                 flags[, metadata])), .byteorder ('<', '>', '|' or '=')
  NDArrayCapture .subtype (dotted name), .version, .shape, .dtype (DTypeCapture), .fortran,
                 .data (raw bytes in C or Fortran order; a list of items for object arrays)
  ScalarCapture  .dtype (DTypeCapture), .data (raw bytes of one item; the item itself for
                 object scalars)
numpy captures rebuild the real value with `.to_numpy()` (np.frombuffer and friends, never a
pickle) and give plain Python / torch values with `.to_primitive()`.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import math
from collections.abc import Collection, Iterable
from typing import Any, ClassVar

from .pickles.policy import (
    AllowListError,
    DangerousGlobalError,
    NotVouchedError,
    Verdict,
    require,
    vet,
)

# Arrays up to this many elements become lists in to_primitive(); bigger numeric ones tensors.
# (A numpy MT19937 key has 624 elements: consumers call np.random.set_state on a list.)
LIST_MAX_ELEMENTS = 1024

# Known enums, so their stand-ins expose `.value` (an unknown class gets a plain StandIn, whose
# `.args[0]` holds the same value).
KNOWN_ENUMS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "megatron.core.enums.ModelType", "megatron.core.transformer.enums.AttnBackend",
    "megatron.core.rerun_state_machine.RerunDiagnostic",
    "megatron.core.rerun_state_machine.RerunMode",
    "megatron.core.rerun_state_machine.RerunState",
    "signal.Signals",
    "transformers.trainer_utils.IntervalStrategy", "transformers.trainer_utils.SchedulerType",
    "transformers.trainer_utils.HubStrategy", "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.FSDPOption", "transformers.training_args.OptimizerNames",
    "transformers.debug_utils.DebugOption",
    "peft.utils.peft_types.PeftType", "peft.utils.peft_types.TaskType",
    "accelerate.utils.dataclasses.DistributedType",
})


# --- generic stand-ins ------------------------------------------------------------------------
class StandIn:
    """Inert placeholder for an instance of a class that is not (or must not be) imported.

    Construction and BUILD only record their arguments; nothing from the file is run. The
    copy protocol below mirrors torch's NEWOBJ + BUILD, so copy.deepcopy works, while pickling
    a stand-in fails (its reported class cannot be found under its name), so one is never
    saved into a checkpoint by accident."""

    standin_name: ClassVar[str] = "StandIn"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any):
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        return self

    def __init__(self, *args: Any, **kwargs: Any):
        pass  # everything happened in __new__ (NEWOBJ never calls __init__)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getstate__(self) -> Any:
        return self.state

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:
        return self.args, self.kwargs

    def __getattr__(self, name: str) -> Any:
        """Read fields from a dict BUILD state the way the real object exposes them (a field
        called args, kwargs or state is only in .state)."""
        state = self.__dict__.get("state")
        if not name.startswith("__") and isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"stand-in for {self.standin_name} has no attribute {name!r}")

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        return f"<stand-in {self.standin_name}({', '.join(parts)})>"


class EnumStandIn(StandIn):
    """Stand-in for an Enum member: enums pickle as REDUCE(EnumClass, (value,))."""

    @property
    def value(self) -> Any:
        return self.args[0] if self.args else None


def standin_for(name: str, enum: bool | None = None) -> type[StandIn]:
    """A StandIn subclass reporting `name` as its module and qualname (one class per name, so
    the same name resolves to the same class in every load). `enum=None`: KNOWN_ENUMS decides."""
    return _standin_class(name, name in KNOWN_ENUMS if enum is None else enum)


@functools.cache
def _standin_class(name: str, enum: bool) -> type[StandIn]:
    module, _, qual = name.rpartition(".")
    base = EnumStandIn if enum else StandIn
    return type(qual, (base,), {"__module__": module, "__qualname__": qual,
                                "standin_name": name})


# --- numpy captures ---------------------------------------------------------------------------
class DTypeCapture:
    """`numpy.dtype(code, align, copy)` followed by BUILD with numpy's dtype state."""

    def __init__(self, code: str | bytes, align: bool = False, copy: bool = True):
        self.code = code.decode("latin-1") if isinstance(code, bytes) else code
        self.align = align
        self.copy = copy
        self.state: tuple | None = None

    def __setstate__(self, state: tuple) -> None:
        self.state = state

    @property
    def byteorder(self) -> str:
        if isinstance(self.state, tuple) and len(self.state) > 1:
            return self.state[1]
        return "="

    def to_numpy(self):
        import numpy as np

        # copy=True: __setstate__ must not modify numpy's cached builtin dtypes
        dt = np.dtype(self.code, bool(self.align), True)
        if self.state is not None:
            dt.__setstate__(_numpy_values(self.state))
        return dt

    def to_primitive(self) -> str | list:
        """numpy's own string spelling ('<u4'), or the field list of a structured dtype."""
        dt = self.to_numpy()
        return dt.descr if dt.fields else dt.str

    def __repr__(self) -> str:
        return f"<dtype capture {self.byteorder}{self.code}>"


class NDArrayCapture:
    """`_reconstruct(subtype, (0,), b'b')` followed by BUILD with
    `(version, shape, dtype, is_fortran, rawdata)`."""

    def __init__(self, subtype: str = "numpy.ndarray"):
        self.subtype = subtype
        self.version: int | None = None
        self.shape: tuple[int, ...] = ()
        self.dtype: DTypeCapture | None = None
        self.fortran = False
        self.data: bytes | list | None = None

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 5:
            self.version, self.shape, self.dtype, self.fortran, self.data = state
        else:  # numpy's pre-versioned 4-tuple
            self.shape, self.dtype, self.fortran, self.data = state
        self.shape = tuple(self.shape)
        self.fortran = bool(self.fortran)

    @property
    def size(self) -> int:
        n = math.prod(self.shape)
        return n

    def to_numpy(self):
        """A writable base ndarray (a subtype such as np.matrix is not rebuilt: see .subtype)."""
        import numpy as np

        dt = _numpy_values(self.dtype)
        if isinstance(self.data, list):  # object arrays pickle their items, not bytes
            flat = np.empty(len(self.data), dtype=dt)
            for i, item in enumerate(self.data):
                flat[i] = item
        else:
            raw = self.data.encode("latin-1") if isinstance(self.data, str) else self.data
            flat = np.frombuffer(bytearray(raw), dtype=dt)
        return flat.reshape(self.shape, order="F" if self.fortran else "C")

    def to_primitive(self, as_tensor: bool | None = None):
        """A list (object/str dtypes, or up to LIST_MAX_ELEMENTS elements) or a CPU tensor.
        `as_tensor` forces the choice."""
        arr = self.to_numpy()
        numeric = arr.dtype.kind in "biufc" and not arr.dtype.fields
        if as_tensor is None:
            as_tensor = numeric and arr.size > LIST_MAX_ELEMENTS
        if not as_tensor:
            return arr.tolist()
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=")))

    def __repr__(self) -> str:
        return f"<ndarray capture {self.dtype!r} shape={self.shape}>"


class ScalarCapture:
    """`numpy.core.multiarray.scalar(dtype, data)`: one item's raw bytes (or the object)."""

    def __init__(self, dtype: DTypeCapture, data: Any = None):
        self.dtype = dtype
        self.data = data

    def to_numpy(self):
        import numpy as np

        dt = _numpy_values(self.dtype)
        if dt.hasobject:
            return self.data
        raw = self.data.encode("latin-1") if isinstance(self.data, str) else self.data
        return np.frombuffer(raw, dtype=dt, count=1)[0]

    def to_primitive(self) -> Any:
        value = self.to_numpy()
        return value.item() if hasattr(value, "item") else value

    def __repr__(self) -> str:
        return f"<scalar capture {self.dtype!r} {self.data!r}>"


def reconstruct_shim(subtype: Any, shape: Any = (0,), dtype_char: Any = b"b") -> NDArrayCapture:
    """Stands in for numpy's `multiarray._reconstruct`: only notes the array subtype."""
    if subtype is NDArrayCapture:
        return NDArrayCapture()
    return NDArrayCapture(getattr(subtype, "standin_name", repr(subtype)))


def _numpy_values(value: Any) -> Any:
    """Replace captures nested in dtype states (fields, subarrays) by real numpy values."""
    if isinstance(value, (DTypeCapture, NDArrayCapture, ScalarCapture)):
        return value.to_numpy()
    if isinstance(value, tuple):
        return tuple(_numpy_values(v) for v in value)
    if isinstance(value, dict):
        return {k: _numpy_values(v) for k, v in value.items()}
    return value


def _numpy_standin(name: str) -> Any:
    """The capture for a numpy global, by what the name does (numpy 1 or 2 spelling)."""
    tail = name.removeprefix("numpy.core.").removeprefix("numpy._core.")
    if tail == "multiarray._reconstruct":
        return reconstruct_shim
    if tail == "multiarray.scalar":
        return ScalarCapture
    if name == "numpy.dtype" or name.startswith("numpy.dtypes."):
        return DTypeCapture
    if name == "numpy.ndarray":
        return NDArrayCapture
    return standin_for(name)


# Registered with every transcoding load so BUILD accepts the capture types whatever names the
# file used.
_CAPTURE_TYPES = (DTypeCapture, NDArrayCapture, ScalarCapture)


def is_standin(obj: Any) -> bool:
    return obj is reconstruct_shim or obj in _CAPTURE_TYPES or (
        isinstance(obj, type) and issubclass(obj, StandIn))


# --- name resolution --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def numpy_major() -> int | None:
    try:
        import numpy
    except ImportError:
        return None
    return int(numpy.__version__.split(".")[0])


def numpy_location(name: str) -> str:
    """Where the installed numpy keeps `name`: numpy.core.* <-> numpy._core.* (numpy 2 renamed
    the package; pickles keep the writer's spelling)."""
    major = numpy_major()
    if major is not None and major >= 2 and name.startswith("numpy.core."):
        return "numpy._core." + name.removeprefix("numpy.core.")
    if major is not None and major < 2 and name.startswith("numpy._core."):
        return "numpy.core." + name.removeprefix("numpy._core.")
    return name


class ModuleReached(ImportError):
    """An attribute path reached a module object: `enum.bltns`, `logging.os`. Refused."""


def import_dotted(location: str) -> Any:
    """Import the longest module prefix of `location` and walk the remaining attributes.
    Raises ImportError or AttributeError when it does not exist, and ModuleReached when an
    attribute on the way (or at the end) is a module object: a name reached through another
    module's imports is never resolved, whatever the policy tables say."""
    import types

    parts = location.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                continue  # this prefix is not a module (or not installed); try a shorter one
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
            if isinstance(obj, types.ModuleType):
                raise ModuleReached(f"{location}: {attr} is a module object reached as an "
                                    "attribute; refused")
        return obj
    raise ImportError(f"no importable module in {location!r}")


def refuse_dangerous(names: list[str]) -> None:
    """DangerousGlobalError when any name is in the dangerous class (see policy.vet)."""
    dangerous = [n for n in names if vet(n).verdict is Verdict.DANGEROUS]
    if dangerous:
        require(dangerous)


def resolve_allowlist(names: Iterable[str], user_vouched: Collection[str] = ()
                      ) -> list[tuple[Any, str]]:
    """`(obj, name)` for every name torch does not already allow, in torch spelling.

    Every name must pass policy.vet (torch default, reviewed data, or named in
    `user_vouched`): DangerousGlobalError / NotVouchedError before anything is imported.
    Real objects where the module imports; stand-ins where it is not installed (or fails to
    import here). A name whose attribute path reaches a module object is refused."""
    names = require(names, user_vouched)
    out = []
    for name in names:
        if vet(name).verdict is Verdict.TORCH:
            continue
        try:
            obj = import_dotted(numpy_location(name))
        except ModuleReached as exc:
            raise DangerousGlobalError(str(exc), [name]) from None
        except Exception:  # not installed, or its import fails on this machine
            obj = _numpy_standin(name) if name.startswith("numpy.") else standin_for(name)
        out.append((obj, name))
    return out


def transcoding_globals(names: Iterable[str]) -> list[tuple[Any, str]]:
    """`(stand-in, name)` for every name torch does not already allow; nothing is imported.
    Safe builtins stay themselves (empty bytes pickle as `builtins.bytes()`, for one).
    Code-executing names are refused (DangerousGlobalError) so a hostile file is never
    laundered into a clean one."""
    names = list(dict.fromkeys(names))
    refuse_dangerous(names)
    out = [(_transcoding_object(n), n) for n in names
           if vet(n).verdict is not Verdict.TORCH]
    out += [(t, f"{t.__module__}.{t.__qualname__}") for t in _CAPTURE_TYPES]
    return out


def _transcoding_object(name: str) -> Any:
    if name.startswith("numpy."):
        return _numpy_standin(name)
    module, _, attr = name.rpartition(".")
    if module == "builtins":  # safe builtins (bytes, slice, ...): nothing to import or convert
        return getattr(builtins, attr)
    return standin_for(name)


__all__ = [
    "StandIn", "EnumStandIn", "standin_for", "DTypeCapture", "NDArrayCapture", "ScalarCapture",
    "reconstruct_shim", "resolve_allowlist", "transcoding_globals", "is_standin",
    "numpy_location", "numpy_major", "import_dotted", "refuse_dangerous", "AllowListError",
    "DangerousGlobalError", "NotVouchedError", "ModuleReached", "KNOWN_ENUMS", "LIST_MAX_ELEMENTS",
]
