"""Which pickled globals are plain data, which can run code, and how torch spells them.

Pure tables and string rules: nothing here imports the modules it names."""

from __future__ import annotations

import _compat_pickle

from ..model import GlobalClass
from .torch_allowlist import TORCH_DEFAULT_ALLOWED

# torch's weights-only unpickler maps Python-2 names before it checks them (torch._utils).
IMPORT_MAPPING = {
    "__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue", "repr": "reprlib",
    "_abcoll": "collections.abc", "UserDict": "collections", "UserList": "collections",
    "UserString": "collections", "whichdb": "dbm", "StringIO": "io", "cStringIO": "io",
}
NAME_MAPPING = {
    ("__builtin__", "xrange"): ("builtins", "range"),
    ("__builtin__", "reduce"): ("functools", "reduce"),
    ("__builtin__", "intern"): ("sys", "intern"),
    ("__builtin__", "unichr"): ("builtins", "chr"),
    ("__builtin__", "unicode"): ("builtins", "str"),
    ("__builtin__", "long"): ("builtins", "int"),
    ("__builtin__", "basestring"): ("builtins", "str"),
    ("itertools", "izip"): ("builtins", "zip"),
    ("itertools", "imap"): ("builtins", "map"),
    ("itertools", "ifilter"): ("builtins", "filter"),
    ("itertools", "ifilterfalse"): ("itertools", "filterfalse"),
    ("itertools", "izip_longest"): ("itertools", "zip_longest"),
    ("UserDict", "IterableUserDict"): ("collections", "UserDict"),
    ("UserList", "UserList"): ("collections", "UserList"),
    ("UserString", "UserString"): ("collections", "UserString"),
    ("exceptions", "StandardError"): ("builtins", "Exception"),
    ("UserDict", "UserDict"): ("collections", "UserDict"),
}
# Modules torch refuses even when the user allow-lists a name from them.
TORCH_BLOCKED_MODULES = frozenset({"sys", "os", "posix", "nt"})


def torch_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) torch's weights-only unpickler compares, after its name mapping."""
    if (module, name) in NAME_MAPPING:
        return NAME_MAPPING[(module, name)]
    return IMPORT_MAPPING.get(module, module), name


# ---------------------------------------------------------------------------------------------
# Plain data: safe to allow-list (building them runs no code from the file).
_NUMPY_CORE = ("numpy.core", "numpy._core")
DATA_EXACT = frozenset(
    [f"{m}.multiarray.{f}" for m in _NUMPY_CORE for f in ("_reconstruct", "scalar")]
    + [f"{m}.numeric._frombuffer" for m in _NUMPY_CORE]
    + [
        "numpy.ndarray", "numpy.dtype", "numpy.ma.core._mareconstruct", "numpy.ma.core.MaskedArray",
        "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor", "numpy.random.mtrand.RandomState",
        "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64",
        "numpy.random._generator.Generator",
        "collections.defaultdict", "collections.deque", "collections.OrderedDict",
        "collections.Counter", "copyreg._reconstructor", "copyreg.__newobj__",
        "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.complex",
        "builtins.slice", "builtins.range", "builtins.list", "builtins.dict", "builtins.tuple",
        "builtins.int", "builtins.float", "builtins.str", "builtins.bytes", "builtins.bool",
        "builtins.object", "_codecs.encode", "codecs.encode",
        "argparse.Namespace", "types.SimpleNamespace", "typing.Any",
        "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePath",
        "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath", "pathlib._local.Path",
        "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
        "datetime.timezone", "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
        "io.BytesIO", "_io.BytesIO", "signal.Signals",
        "torch.torch_version.TorchVersion", "torch._C.Generator", "torch.Generator",
        # DeepSpeed training state
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.utils.tensor_fragment.fragment_address",
        # omegaconf containers (Lightning / Hydra hyper-parameters)
        "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
        "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
        # Lightning
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        # accelerate
        "accelerate.data_loader.SeedableRandomSampler",
        # Megatron (megatron/core/safe_globals.py)
        "megatron.core.enums.ModelType", "megatron.core.transformer.enums.AttnBackend",
        "megatron.core.optimizer.optimizer_config.OptimizerConfig",
    ]
)
DATA_PREFIXES = (
    "numpy.dtypes.",  # numpy dtype classes (surface at BUILD)
    "transformers.training_args.", "transformers.training_args_seq2seq.",
    "transformers.trainer_utils.", "transformers.trainer_pt_utils.AcceleratorConfig",
    "transformers.debug_utils.", "transformers.utils.generic.ExplicitEnum",
    "accelerate.utils.dataclasses.", "trl.trainer.", "peft.utils.peft_types.",
    "omegaconf.nodes.", "torch.distributed.checkpoint.metadata.",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "megatron.core.rerun_state_machine.", "megatron.core.transformer.cuda_graphs.",
    "enum.",
)
# numpy scalar types (numpy.float64 and friends) are plain data.
NUMPY_SCALAR_NAMES = frozenset(
    "bool_ bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
    "longdouble complex64 complex128 clongdouble intc uintc longlong ulonglong str_ bytes_ "
    "void datetime64 timedelta64 float_ int_ object_".split()
)

# ---------------------------------------------------------------------------------------------
# Dangerous: anything that can run code, import modules, or touch files, processes, network.
DANGEROUS_MODULES = frozenset(
    """os posix nt sys subprocess _posixsubprocess shutil socket _socket ssl select selectors
    importlib imp runpy marshal pickle _pickle cPickle dill cloudpickle joblib webbrowser ctypes
    _ctypes code codeop pty pdb bdb timeit trace profile cProfile multiprocessing asyncio
    threading _thread platform glob tempfile pip setuptools distutils ensurepip
    venv http urllib urllib2 urllib3 requests httplib ftplib smtplib telnetlib xmlrpc socketserver
    sqlite3 zipimport pkgutil sysconfig site idlelib tkinter commands popen2
    posixpath ntpath genericpath fcntl resource mmap gc inspect linecache ast dis types
    functools operator torch.hub torch.package torch.utils.cpp_extension torch.jit
    torch.fx torch._dynamo torch._inductor torch.utils.data.datapipes numpy.f2py numpy.distutils
    numpy.testing numpy.lib.npyio numpy.load
    _operator _functools _imp _frozen_importlib _frozen_importlib_external _thread _io
    pydoc _osx_support _aix_support doctest lib2to3 logging.config shelve dbm tarfile zipfile
    concurrent numpy.lib.format torch.utils.collect_env torch.utils.bottleneck""".split()
)
# Modules that hand out code execution to whoever holds the module object itself. Reached as an
# *attribute* of an innocent module (`logging.os`, `pathlib.os`, `torch.serialization.pickle`)
# they are as dangerous as named directly: REDUCE(_operator.methodcaller('system', cmd),
# (logging.os,)) runs a shell without any 'os' or 'system' global.
GATEWAY_ATTRS = frozenset(
    """os posix nt sys subprocess _posixsubprocess builtins __builtin__ importlib _imp pickle
    _pickle cPickle marshal runpy shutil socket ctypes _ctypes operator _operator functools
    _functools io _io pty pdb code codeop pydoc""".split()
)
# Members of otherwise-harmless modules that run code or load files.
DANGEROUS_EXACT = frozenset(
    """torch.load torch.serialization.load torch.storage._load_from_bytes torch._load_global_deps
    torch.ops torch._ops.ops numpy.load numpy.fromfile numpy.save numpy.lib.format.read_array
    io.open io.FileIO _io.open _io.FileIO io.open_code codecs.open pathlib.Path.write_text
    pathlib.Path.write_bytes pathlib.Path.unlink collections.namedtuple typing.NamedTuple
    functools.partial functools.reduce operator.attrgetter operator.methodcaller
    operator.itemgetter torch._utils._import_dotted_name uuid._get_command_stdout
    torch.save torch.serialization.save numpy.savez numpy.savez_compressed numpy.savetxt
    numpy.memmap""".split()
)
# Safe members of builtins; every other builtin (eval, exec, getattr, open, __import__, ...)
# is dangerous.
SAFE_BUILTINS = frozenset(
    "set frozenset bytearray complex slice range list dict tuple int float str bytes bool "
    "object Exception ValueError KeyError TypeError RuntimeError NotImplemented Ellipsis".split()
)
# Attribute names that reach code or the system whatever module they hang off.
DANGEROUS_ATTRS = frozenset(
    """system popen spawn exec eval compile getattr setattr delattr __import__ open
    __globals__ __builtins__ __subclasses__ __code__ __reduce__ __reduce_ex__ __getattribute__
    __class__ __bases__ __mro__ __dict__ __init__ __call__ __new__ load loads run call
    check_output check_call Popen import_module remove unlink rmtree""".split()
)
_BENIGN_DUNDER = frozenset({"__newobj__", "__newobj_ex__", "__main__"})


def python_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) plain pickle imports: Python's own Python-2 mapping (fix_imports,
    _compat_pickle) is larger than torch's (`commands` -> subprocess, `SocketServer` ->
    socketserver, `SimpleHTTPServer` -> http.server, ...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify(name: str) -> GlobalClass:
    """Class a dotted global name (file spelling or torch spelling).

    A name is as dangerous as the worst of its spellings: as written, as torch's weights-only
    unpickler maps it, and as plain pickle (torch.load(weights_only=False)) maps it."""
    klass = _classify(name)
    module, _, qual = name.rpartition(".")
    if klass is not GlobalClass.DANGEROUS and module:
        pmod, pname = python_name(module, qual)
        if (pmod, pname) != (module, qual) and _classify(f"{pmod}.{pname}") is \
                GlobalClass.DANGEROUS:
            return GlobalClass.DANGEROUS
    return klass


def _classify(name: str) -> GlobalClass:
    module, _, qual = name.rpartition(".") if "." in name else ("", "", name)
    # A global's attribute path may itself be dotted ("posixpath os.system" in protocol 4).
    parts = name.split(".")
    tmod, tname = torch_name(module, qual)
    tfull = f"{tmod}.{tname}" if tmod else tname
    if tfull in TORCH_DEFAULT_ALLOWED or name in TORCH_DEFAULT_ALLOWED:
        return GlobalClass.TORCH_ALLOWED
    if tfull in DATA_EXACT or name in DATA_EXACT:  # named one by one: beats module rules
        return GlobalClass.DATA
    # dangerous module anywhere on the path (os.path.join, posixpath.os, ...)
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in DANGEROUS_MODULES or prefix in DANGEROUS_EXACT:
            return GlobalClass.DANGEROUS
    if tmod in DANGEROUS_MODULES:
        return GlobalClass.DANGEROUS
    if tmod == "builtins":
        return GlobalClass.DATA if tname in SAFE_BUILTINS else GlobalClass.DANGEROUS
    if tfull in DANGEROUS_EXACT:
        return GlobalClass.DANGEROUS
    for p in parts[1:]:
        if p in DANGEROUS_ATTRS:
            return GlobalClass.DANGEROUS
        if p.startswith("__") and p.endswith("__") and p not in _BENIGN_DUNDER:
            return GlobalClass.DANGEROUS
    if any(p in GATEWAY_ATTRS for p in parts[1:]):
        return GlobalClass.DANGEROUS
    if tfull.startswith(DATA_PREFIXES):
        return GlobalClass.DATA
    if tmod == "numpy" and tname in NUMPY_SCALAR_NAMES:
        return GlobalClass.DATA
    return GlobalClass.UNKNOWN


# numpy dtype pickles are REDUCE(numpy.dtype, (code, align, copy)); the *type* of the result is
# a numpy.dtypes class torch checks at BUILD but never sees as a GLOBAL (the BUILD trap).
_DTYPE_KIND = {
    "b": {1: "BoolDType"},
    "i": {1: "Int8DType", 2: "Int16DType", 4: "Int32DType", 8: "Int64DType"},
    "u": {1: "UInt8DType", 2: "UInt16DType", 4: "UInt32DType", 8: "UInt64DType"},
    "f": {2: "Float16DType", 4: "Float32DType", 8: "Float64DType", 16: "LongDoubleDType",
          12: "LongDoubleDType"},
    "c": {8: "Complex64DType", 16: "Complex128DType", 32: "CLongDoubleDType",
          24: "CLongDoubleDType"},
}
_DTYPE_FLEX = {"O": "ObjectDType", "M": "DateTime64DType", "m": "TimeDelta64DType",
               "U": "StrDType", "S": "BytesDType", "V": "VoidDType"}


def numpy_dtype_class(code: object) -> str | None:
    """numpy.dtypes class name that np.dtype(code) builds, from the pickled code ('u4', ...)."""
    if isinstance(code, bytes):
        code = code.decode("latin-1")
    if not isinstance(code, str) or not code:
        return None
    kind, size = code[0], code[1:]
    if kind in _DTYPE_FLEX:
        return f"numpy.dtypes.{_DTYPE_FLEX[kind]}"
    if kind in _DTYPE_KIND and size.isdigit() and int(size) in _DTYPE_KIND[kind]:
        return f"numpy.dtypes.{_DTYPE_KIND[kind][int(size)]}"
    return None
