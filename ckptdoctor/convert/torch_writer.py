"""A streaming writer of torch.save's zip format.

Why not torch.save: it needs every tensor in memory (or touches every mapped page) before it
returns, so a consolidated checkpoint costs its whole size in RSS. This writer produces the
same file torch.save would (protocol-2 data.pkl with ('storage', <type>, key, 'cpu', numel)
persistent ids and `torch._utils._rebuild_tensor_v2` calls, then `.format_version`,
`.storage_alignment`, `byteorder`, `data/<key>` records 64-byte aligned, `version`,
`.data/serialization_id`), but pickles *placeholders* (TensorRef) and streams each storage
from its lazily loaded source, one tensor and CHUNK bytes at a time.

The pickler is the pure-Python `pickle._Pickler` so that tensor placeholders and loader
stand-ins (objects of classes that are not importable here, e.g. DeepSpeed's LossScaler) can
be written under their original global names, exactly as the source file spelled them."""

from __future__ import annotations

import io
import pickle
import struct
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    CHUNK,
    Options,
    TensorEntry,
    Writeback,
    dtype_name,
    entry_chunks,
    fail,
    holds,
    is_tensor,
)

ALIGNMENT = 64
_PAD_HEADER_ID = 0x4246  # "FB", the extra-field id torch's writer pads with


class TensorRef:
    """Stands in the object tree for a tensor the writer streams from `entry`. The same
    TensorRef referenced twice is one tensor (tied weights stay tied)."""

    __slots__ = ("entry", "dtype", "parameter", "requires_grad")

    def __init__(self, entry: TensorEntry, dtype: Any = None, parameter: bool = False,
                 requires_grad: bool = False):
        self.entry = entry
        self.dtype = dtype if dtype is not None else entry.dtype
        self.parameter = parameter
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape

    @property
    def nbytes(self) -> int:
        return self.entry.numel * self.dtype.itemsize


class _Global:
    """Written as GLOBAL module\\nname\\n without importing anything."""

    def __init__(self, name: str):
        self.module, _, self.name = name.rpartition(".")


class _Pid:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: Any, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Inner:
    """The plain tensor inside a Parameter's reduce."""

    __slots__ = ("ref",)

    def __init__(self, ref: TensorRef):
        self.ref = ref


def storage_type(dtype: Any) -> Any:
    """What torch pickles as a storage's type: the legacy class (torch.FloatStorage) or, for
    dtypes that never had one (uint16, float8...), the dtype itself."""
    import torch

    names = torch.storage._dtype_to_storage_type_map()
    return getattr(torch, names.get(dtype, dtype_name(dtype)))


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


# the pure-Python pickler's own save(), which typeshed does not declare
_PY_SAVE: Callable[..., None] = pickle._Pickler.save  # type: ignore[attr-defined]


class _Pickler(pickle._Pickler):  # the pure-Python pickler is the extensible one
    # its internals, not in typeshed
    memo: dict[int, tuple[int, Any]]
    write: Callable[[bytes], Any]
    get: Callable[[int], bytes]
    memoize: Callable[[Any], None]
    save_reduce: Callable[..., None]

    def __init__(self, file: io.BytesIO):
        super().__init__(file, protocol=2)
        self.storages: list[TensorRef] = []
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Pid):
            return ("storage", storage_type(obj.dtype), obj.key, "cpu", obj.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        from ..standins import StandIn

        if isinstance(obj, (TensorRef, StandIn, _Global, _Inner)):
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            if isinstance(obj, _Global):
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
                self.memoize(obj)
            elif isinstance(obj, _Inner):
                self._save_tensor(obj.ref, obj)
            elif isinstance(obj, TensorRef):
                if obj.parameter:
                    import torch

                    self.save_reduce(torch._utils._rebuild_parameter,
                                     (_Inner(obj), obj.requires_grad, OrderedDict()), obj=obj)
                else:
                    self._save_tensor(obj, obj)
            else:
                self._save_standin(obj)
            return
        _PY_SAVE(self, obj, save_persistent_id)

    def _save_tensor(self, ref: TensorRef, memo_obj: Any) -> None:
        import torch

        key = self._keys.get(id(ref))
        if key is None:
            key = self._keys[id(ref)] = str(len(self.storages))
            self.storages.append(ref)
        pid = _Pid(key, ref.dtype, ref.entry.numel)
        args: tuple[Any, ...] = (pid, 0, tuple(ref.shape), contiguous_stride(ref.shape),
                ref.requires_grad and not ref.parameter, OrderedDict())
        self.save_reduce(torch._utils._rebuild_tensor_v2, args, obj=memo_obj)

    def _save_standin(self, obj: Any) -> None:
        """A loader stand-in goes back out under the name it came in with: enums as
        REDUCE(cls, (value,)), other objects as NEWOBJ(cls, args) + BUILD(state)."""
        from ..standins import EnumStandIn

        if obj.kwargs:
            raise pickle.PicklingError(
                f"{obj.standin_name}: keyword construction arguments need pickle protocol 4, "
                "which torch's weights-only loader rejects")
        self.save(_Global(obj.standin_name))
        self.save(tuple(obj.args))
        self.write(pickle.REDUCE if isinstance(obj, EnumStandIn) else pickle.NEWOBJ)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)


def refs_for_tensors(obj: Any, path: str = "") -> Any:
    """`obj` with every real tensor replaced by a TensorRef (the same tensor object by the same
    TensorRef, so ties survive), for trees that hold loaded tensors."""
    import torch

    from ..standins import StandIn
    from .common import MAPPED, tensor_entry

    MAPPED.refresh()  # the tensors below exist already: see MappedFiles
    refs: dict[int, TensorRef] = {}

    def walk(v: Any, where: str, depth: int) -> Any:
        if depth > 200:
            raise fail(where, "object nesting deeper than 200 levels")
        if isinstance(v, torch.Tensor):
            if id(v) not in refs:
                refs[id(v)] = TensorRef(tensor_entry(where, v), parameter=isinstance(
                    v, torch.nn.Parameter), requires_grad=v.requires_grad)
            return refs[id(v)]
        if isinstance(v, dict):
            if not holds(v, is_tensor, depth):
                return v
            out = type(v)() if type(v) in (dict, OrderedDict) else dict()
            for k, x in v.items():
                out[k] = walk(x, f"{where}.{k}" if where else str(k), depth + 1)
            if type(v) is OrderedDict and vars(v):
                out.__dict__.update(vars(v))
            return out
        if isinstance(v, (list, tuple)) and holds(v, is_tensor, depth):
            items = [walk(x, f"{where}.{i}" if where else str(i), depth + 1)
                     for i, x in enumerate(v)]
            return items if type(v) is list else tuple(items)
        if isinstance(v, StandIn) and holds(v.state, is_tensor, depth):
            v.state = walk(v.state, f"{where}@state", depth + 1)
        return v

    return walk(obj, path, 0)


def pickle_tree(obj: Any) -> tuple[bytes, list[TensorRef]]:
    """data.pkl bytes for `obj` (TensorRef placeholders for tensors) and the storages in key
    order."""
    buf = io.BytesIO()
    p = _Pickler(buf)
    try:
        p.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise fail("", f"cannot pickle the object tree for torch.save's format: {exc}") from None
    return buf.getvalue(), p.storages


def archive_name(path: Path) -> str:
    stem = Path(path).name.split(".")[0] or "archive"
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)


def aligned_record(zf: zipfile.ZipFile, raw: Any, name: str, size: int) -> Any:
    """Open record `name` (`size` bytes, stored) for writing in `zf`, whose underlying file is
    `raw`, with its data 64-byte aligned as torch's writer pads it (the extra field "FB")."""
    zinfo = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zinfo.compress_type = zipfile.ZIP_STORED
    zinfo.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule
    here = raw.tell()
    fixed = 30 + len(zinfo.filename.encode()) + (20 if zip64 else 0) + 4
    pad = (-(here + fixed)) % ALIGNMENT
    zinfo.extra = struct.pack("<HH", _PAD_HEADER_ID, pad) + b"Z" * pad
    return zf.open(zinfo, "w", force_zip64=zip64)


def write_torch_zip(target: Path, obj: Any, opts: Options, archive: str | None = None,
                    label: str = "write") -> tuple[int, int]:
    """Write `obj` (TensorRefs for tensors) to `target` (a new file) in torch.save's format.
    Returns (number of storages, tensor bytes)."""
    data_pkl, storages = pickle_tree(obj)
    prefix = (archive or archive_name(target)) + "/"
    total = 0
    with open(target, "xb") as raw:
        wb = Writeback(raw)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            def record(name: str, size: int):
                return aligned_record(zf, raw, prefix + name, size)

            def small(name: str, data: bytes) -> None:
                with record(name, len(data)) as fh:
                    fh.write(data)

            small("data.pkl", data_pkl)
            small(".format_version", b"1")
            small(".storage_alignment", str(ALIGNMENT).encode())
            small("byteorder", b"little")
            for key, ref in enumerate(storages):
                written = 0
                with record(f"data/{key}", ref.nbytes) as fh:
                    for part in entry_chunks(ref.entry, ref.dtype, CHUNK):
                        fh.write(part)
                        written += part.shape[0]
                        opts.tick(label, part.shape[0])
                        wb.kick(raw.tell())
                if written != ref.nbytes:
                    raise fail(ref.entry.origin, f"{ref.entry.name}: wrote {written} bytes, "
                                                 f"expected {ref.nbytes}")
                total += written
            small("version", b"3\n")
            small(".data/serialization_id", str(uuid.uuid4().int).zfill(40)[:40].encode())
        raw.flush()  # fsync happens at commit, after verification
    return len(storages), total
