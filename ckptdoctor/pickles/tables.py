"""What torch's weights-only unpickler implements and how torch.save spells storages: the
opcode set (shared by the scan and the protocol-2 rewrite), the tensor-rebuild callables, the
types it builds or fills, and the one storage-class / dtype-size table."""

from __future__ import annotations

import pickletools

# Opcodes torch's weights-only Unpickler implements; anything else is "Unsupported operand N".
TORCH_OPCODES = frozenset(
    ["GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK",
     "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE",
     "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT",
     "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT",
     "LONG_BINPUT", "LONG1", "PROTO", "STOP"]
)
TENSOR_REBUILDS = frozenset(
    ["torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
     "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_device_tensor_from_cpu_tensor"]
)
PARAM_REBUILDS = frozenset(
    {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
)
OPCODE_BYTE = {o.name: ord(o.code) for o in pickletools.opcodes}
BUILDABLE_BY_DEFAULT = frozenset(
    {"torch.Tensor", "torch.nn.parameter.Parameter", "collections.OrderedDict"}
)
SETITEM_TYPES = frozenset({"collections.OrderedDict", "collections.Counter"})
# Call results that are known not to be dicts: SETITEM(S) into one is the CVE-2026-24747
# pattern. Results of other (unknown) classes may be dict subclasses (defaultdict, ModelOutput).
NON_DICT_TYPES = frozenset(
    ["builtins.list", "builtins.tuple", "builtins.set", "builtins.frozenset", "builtins.bytearray",
     "builtins.bytes", "builtins.str", "builtins.int", "builtins.float", "builtins.complex",
     "builtins.bool", "builtins.slice", "builtins.range", "torch.Size", "torch.device",
     "torch.Tensor", "torch.nn.parameter.Parameter", "torch._utils._rebuild_qtensor",
     "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor"]
) | {None}
CVE_WEIGHTS_ONLY = "CVE-2026-24747"

# Storage class name -> (torch dtype name, element size in bytes).
STORAGE_DTYPES = {
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1), "ComplexFloatStorage": ("complex64", 8),
    "ComplexDoubleStorage": ("complex128", 16), "QInt8Storage": ("qint8", 1),
    "QUInt8Storage": ("quint8", 1), "QInt32Storage": ("qint32", 4),
    "QUInt4x2Storage": ("quint4x2", 1), "QUInt2x4Storage": ("quint2x4", 1),
    "UntypedStorage": ("uint8", 1),
}
DTYPE_SIZES = {v[0]: v[1] for v in STORAGE_DTYPES.values()}
DTYPE_SIZES.update({
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "uint16": 2, "uint32": 4, "uint64": 8, "complex32": 4,
})
