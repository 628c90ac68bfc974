"""Which pickled globals are plain data, which can run code, and how torch spells them.

Pure tables and string rules: nothing here imports the modules it names."""

from __future__ import annotations

import _compat_pickle
import enum
import functools
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..errors import (
    AllowListError as AllowListError,  # re-exported: standins, loaders
    DangerousGlobalError as DangerousGlobalError,  # re-exported: standins, repair.transcode
    NotVouchedError as NotVouchedError,  # re-exported: standins, loaders, repair.transcode
)
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
# Names the libraries that write training checkpoints really pickle, one by one (checked
# against the fixtures of tests/fixtures/factory.py and the libraries' own safe-globals lists).
# Never a module prefix: a prefix also matches attribute paths through the module's imports
# (`torch.distributed.checkpoint.metadata.torch._utils._import_dotted_name`).
NUMPY_DTYPE_CLASSES = frozenset(
    f"numpy.dtypes.{n}" for n in
    """BoolDType ByteDType BytesDType CLongDoubleDType Complex128DType Complex64DType
    DateTime64DType Float16DType Float32DType Float64DType Int16DType Int32DType Int64DType
    Int8DType IntDType LongDType LongDoubleDType LongLongDType ObjectDType ShortDType StrDType
    StringDType TimeDelta64DType UByteDType UInt16DType UInt32DType UInt64DType UInt8DType
    UIntDType ULongDType ULongLongDType UShortDType VoidDType""".split())
LIBRARY_DATA = frozenset(
    """transformers.training_args.TrainingArguments transformers.training_args.OptimizerNames
    transformers.training_args_seq2seq.Seq2SeqTrainingArguments
    transformers.trainer_utils.IntervalStrategy transformers.trainer_utils.SchedulerType
    transformers.trainer_utils.HubStrategy transformers.trainer_utils.SaveStrategy
    transformers.trainer_utils.FSDPOption transformers.trainer_utils.EvaluationStrategy
    transformers.trainer_pt_utils.AcceleratorConfig transformers.debug_utils.DebugOption
    transformers.utils.generic.ExplicitEnum
    accelerate.utils.dataclasses.DistributedType accelerate.utils.dataclasses.PrecisionType
    accelerate.utils.dataclasses.DynamoBackend accelerate.utils.dataclasses.RNGType
    trl.trainer.sft_config.SFTConfig trl.trainer.dpo_config.DPOConfig
    trl.trainer.grpo_config.GRPOConfig trl.trainer.reward_config.RewardConfig
    peft.utils.peft_types.PeftType peft.utils.peft_types.TaskType
    omegaconf.nodes.AnyNode omegaconf.nodes.StringNode omegaconf.nodes.IntegerNode
    omegaconf.nodes.FloatNode omegaconf.nodes.BooleanNode omegaconf.nodes.EnumNode
    omegaconf.nodes.BytesNode omegaconf.nodes.PathNode
    torch.distributed.checkpoint.metadata.Metadata
    torch.distributed.checkpoint.metadata.TensorStorageMetadata
    torch.distributed.checkpoint.metadata.BytesStorageMetadata
    torch.distributed.checkpoint.metadata.ChunkStorageMetadata
    torch.distributed.checkpoint.metadata.TensorProperties
    torch.distributed.checkpoint.metadata.MetadataIndex
    torch.distributed.checkpoint.metadata.StorageMeta
    torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING
    torch.distributed.checkpoint.filesystem._StorageInfo torch.strided torch.sparse_coo
    torch.distributed.checkpoint.planner.LoadItemType
    torch.distributed.checkpoint.planner.WriteItemType
    megatron.core.rerun_state_machine.RerunDiagnostic megatron.core.rerun_state_machine.RerunMode
    megatron.core.rerun_state_machine.RerunState
    megatron.core.transformer.cuda_graphs.CudaGraphScope
    transformers.integrations.deepspeed.HfDeepSpeedConfig
    transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig""".split())
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


@functools.lru_cache(maxsize=1 << 16)
def classify(name: str) -> GlobalClass:
    """Class a dotted global name (file spelling or torch spelling).

    A name is as dangerous as the worst of its spellings: as written, as torch's weights-only
    unpickler maps it, and as plain pickle (torch.load(weights_only=False)) maps it. Use
    `vet()` to decide whether a name may be resolved; this only describes it."""
    klass = _classify(name)
    module, _, qual = name.rpartition(".")
    if klass is not GlobalClass.DANGEROUS and module:
        pmod, pname = python_name(module, qual)
        if (pmod, pname) != (module, qual):
            other = _classify(f"{pmod}.{pname}")
            if other is GlobalClass.DANGEROUS:
                return GlobalClass.DANGEROUS
            if klass is GlobalClass.UNKNOWN:
                return other
    return klass


# Stdlib modules that are packages: a third component after them may be a submodule. After any
# other stdlib module a third component is an attribute of one of its objects (`enum.bltns.exec`
# reaches builtins through enum's `import builtins as bltns`; `pathlib.PosixPath.write_text` is
# a method): an attribute path, never plain data.
STDLIB_PACKAGES = frozenset(
    """collections concurrent ctypes curses dbm email encodings ensurepip html http idlelib
    importlib json lib2to3 logging multiprocessing pathlib pydoc_data re sqlite3 sysconfig test
    tkinter tomllib unittest urllib venv wsgiref xml xmlrpc zoneinfo asyncio os""".split())
# Module objects commonly bound under another name inside innocent modules.
MODULE_ALIASES = frozenset({"bltns", "_bltns", "np", "_np", "th", "_torch", "_builtins",
                            "__builtins__"})
# Roots whose module object hands out everything (torch.load, numpy.load, ...): reached as an
# attribute of another module they are a gateway.
GATEWAY_ROOTS = frozenset({"torch", "numpy", "builtins", "transformers", "accelerate",
                           "deepspeed", "lightning", "pytorch_lightning", "megatron", "safetensors",
                           "pickle", "os", "sys", "subprocess", "importlib"})
# More stdlib and torch callables that run code, spawn processes or write files.
DANGEROUS_MORE = frozenset(
    """typing._eval_type typing.ForwardRef typing.get_type_hints typing._type_check
    typing.evaluate_forward_ref annotationlib imaplib mailcap logging smtpd nntplib poplib cgi
    cgitb pipes turtle turtledemo msilib winreg _winapi test tabnanny py_compile compileall
    zipapp pstats crypt spwd pwd grp termios tty readline rlcompleter cmd code shlex
    torch.utils._config_module torch._dynamo torch._inductor torch._functorch torch.compiler
    torch.export torch._export torch.onnx torch.testing torch.utils.benchmark
    torch._higher_order_ops
    torch.fx torch.library torch._library torch.utils.hooks torch.autograd torch._C._jit
    torch.distributed.rpc torch.distributed.elastic torch.distributed.run torch.multiprocessing
    torch.backends torch.utils.data torch.utils.checkpoint torch.overrides torch._classes
    torch.classes torch._ops torch.cuda.memory torch._logging torch.utils.tensorboard
    numpy.ctypeslib numpy.lib.npyio numpy.lib._npyio_impl numpy.lib.format numpy.genfromtxt
    numpy.loadtxt numpy.fromregex numpy.frompyfunc numpy.vectorize numpy.lib.utils
    pandas.read_pickle pandas.read_csv pandas.io torch.from_file torch.serialization
    torch.utils.model_zoo torch.distributed.checkpoint.FileSystemWriter
    torch.distributed.checkpoint.filesystem.FileSystemWriter numpy.ndarray.tofile
    numpy.ndarray.dump numpy.core.records.fromfile numpy._core.records.fromfile
    numpy.rec.fromfile numpy.core.records numpy._core.records numpy.rec""".split())
_METHOD_ATTRS = frozenset(
    """write_text write_bytes read_text read_bytes touch mkdir rename replace symlink_to
    hardlink_to link_to chmod lchmod unlink rmdir open exec_module findmatch fromkeys get
    setdefault pop update __call__ mro format format_map""".split())


def is_attribute_path(name: str) -> bool:
    """True when `name` reaches an object through another object's attributes in a way no
    checkpoint writer does: through a module alias or a gateway module bound inside another
    module (`X.os`, `enum.bltns`, `...metadata.torch._utils`), or to an attribute of a class of
    a flat stdlib module (`pathlib.PosixPath.write_text`, `builtins.dict.get`)."""
    parts = name.split(".")
    for p in parts[1:]:
        bare = p.lstrip("_")
        if p in MODULE_ALIASES or bare in GATEWAY_ROOTS or p == parts[0] \
                or bare in DANGEROUS_MODULES or p in GATEWAY_ATTRS:
            return True
    if len(parts) > 2 and parts[0] in _STDLIB and parts[0] not in STDLIB_PACKAGES:
        return True
    for i, p in enumerate(parts[1:-1], start=1):  # a Class.attribute: a method or a member
        if p[:1].isupper() and (parts[i + 1][:1].islower() or parts[i + 1] in _METHOD_ATTRS):
            return True
    return False


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__builtin__"}


_STDLIB = _stdlib()
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


def _classify(name: str) -> GlobalClass:
    module, _, qual = name.rpartition(".") if "." in name else ("", "", name)
    parts = name.split(".")
    tmod, tname = torch_name(module, qual)
    tfull = f"{tmod}.{tname}" if tmod else tname
    if tfull in TORCH_DEFAULT_ALLOWED or name in TORCH_DEFAULT_ALLOWED:
        return GlobalClass.TORCH_ALLOWED
    if tfull in DATA_EXACT or name in DATA_EXACT or tfull in LIBRARY_DATA \
            or tfull in NUMPY_DTYPE_CLASSES:  # named one by one: beats module rules
        return GlobalClass.DATA
    if not _IDENT.match(name):  # "posixpath os.system", "a..b", "": not a name a writer makes
        return GlobalClass.DANGEROUS
    # dangerous module anywhere on the path (os.path.join, posixpath.os, ...)
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in DANGEROUS_MODULES or prefix in DANGEROUS_EXACT or prefix in DANGEROUS_MORE:
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
    if is_attribute_path(tfull) or is_attribute_path(name):
        return GlobalClass.DANGEROUS
    if tmod == "numpy" and tname in NUMPY_SCALAR_NAMES:
        return GlobalClass.DATA
    if parts[0] in _STDLIB or tfull.split(".")[0] in _STDLIB:
        # The standard library is full of callables that write files, spawn processes or
        # open sockets (gzip.GzipFile, bz2.BZ2File, wave.open, ...). Its data types a
        # checkpoint needs are reviewed one by one above; no --allow vouches for the rest.
        return GlobalClass.DANGEROUS
    return GlobalClass.UNKNOWN


# ---------------------------------------------------------------------------------------------
# The gate. Every path that resolves, registers or writes a global name asks vet(): the CLI's
# --allow, the loader strategies, the trusted unpickler, stand-ins, transcode, repair and the
# allow-list files repair writes.
class Verdict(str, enum.Enum):
    TORCH = "torch-allowed"  # torch's own weights_only default
    DATA = "data"  # an exact, reviewed data name
    VOUCHED = "vouched"  # unknown, named by the user (--allow)
    DANGEROUS = "dangerous"  # refused, even when named
    UNKNOWN = "unknown"  # refused unless named

    @property
    def allowed(self) -> bool:
        return self in (Verdict.TORCH, Verdict.DATA, Verdict.VOUCHED)


@dataclass(frozen=True)
class Vetting:
    name: str
    verdict: Verdict

    @property
    def allowed(self) -> bool:
        return self.verdict.allowed


def spellings(name: str) -> set[str]:
    """`name` as written, as torch maps it and as plain pickle maps it."""
    out = {name}
    module, _, qual = name.rpartition(".")
    if module:
        out.add(".".join(x for x in torch_name(module, qual) if x))
        out.add(".".join(x for x in python_name(module, qual) if x))
    return out


def vet(name: str, allow: Collection[str] = ()) -> Vetting:
    """May `name` be resolved? TORCH and DATA always, an UNKNOWN name only when it is in
    `allow` (the user vouched for it), a DANGEROUS name never."""
    klass = classify(name) if isinstance(name, str) else GlobalClass.DANGEROUS
    if klass is GlobalClass.DANGEROUS:
        return Vetting(name, Verdict.DANGEROUS)
    if klass is GlobalClass.TORCH_ALLOWED:
        return Vetting(name, Verdict.TORCH)
    if klass is GlobalClass.DATA:
        return Vetting(name, Verdict.DATA)
    if spellings(name) & set(allow):
        return Vetting(name, Verdict.VOUCHED)
    return Vetting(name, Verdict.UNKNOWN)


def allow_flags(names: Iterable[str]) -> str:
    return " ".join(f"--allow {n}" for n in names)


def require(names: Iterable[str], allow: Collection[str] = ()) -> list[str]:
    """The names, if every one passes vet(); else DangerousGlobalError (checked first) or
    NotVouchedError listing every refused name."""
    names = list(dict.fromkeys(names))
    verdicts = [vet(n, allow) for n in names]
    dangerous = [v.name for v in verdicts if v.verdict is Verdict.DANGEROUS]
    if dangerous:
        raise DangerousGlobalError(
            "refusing code-executing global(s): " + ", ".join(dangerous)
            + " (ckptdoctor never resolves them, even when named with --allow)", dangerous)
    unknown = [v.name for v in verdicts if v.verdict is Verdict.UNKNOWN]
    if unknown:
        raise NotVouchedError(
            "global(s) of unknown safety: " + ", ".join(unknown) + "; resolving them imports "
            "and runs their module's code, and --trust alone does not admit them. If you "
            "trust the file, pass " + allow_flags(unknown), unknown)
    return names


# ---------------------------------------------------------------------------------------------
# What the installed torch's weights_only can be trusted with. Read from package metadata: no
# import of torch on the static paths.
WEIGHTS_ONLY_CVES = (
    ((2, 6), "CVE-2025-32434", "torch.load(weights_only=True) can run code from the file"),
    ((2, 10), "CVE-2026-24747", "torch.load(weights_only=True) memory corruption through "
                                "SETITEM/SETITEMS on non-dicts and storages whose size "
                                "disagrees with their declared numel"),
)


def installed_torch_version() -> str | None:
    """The installed torch's version from its package metadata (torch is not imported)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, int]:
    nums = re.findall(r"\d+", version.split("+")[0])[:2]
    return (int(nums[0]), int(nums[1])) if len(nums) == 2 else (0, 0)


def weights_only_caveats(version: str | None = "installed") -> list[tuple[str, str]]:
    """(CVE id, sentence) for every known weights_only hole of torch `version` (default: the
    installed one). Empty when it has none or torch is not installed."""
    if version == "installed":
        version = installed_torch_version()
    if not version:
        return []
    have = _version_tuple(version)
    return [(cve, f"installed torch {version} < {fixed[0]}.{fixed[1]}: {what} ({cve}); "
                  f"upgrade torch to {fixed[0]}.{fixed[1]} or later")
            for fixed, cve, what in WEIGHTS_ONLY_CVES if have < fixed]


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
