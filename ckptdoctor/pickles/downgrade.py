"""Rewrite a pickle of any protocol into the protocol-2 opcodes torch's weights-only unpickler
reads, without running anything from it.

torch/_weights_only_unpickler.py implements only protocol-2 opcodes (`TORCH_OPCODES`); a file
written with `torch.save(..., pickle_protocol=4)` stops at its first FRAME ("Unsupported operand
149"). `downgrade(data)` is a pure opcode-to-opcode rewrite driven by `pickletools.genops`: no
global is looked up, no object is built. The only state kept is a light stack of *literal*
values (strings, and an empty dict) still waiting to be written, so STACK_GLOBAL can become
GLOBAL "module\\nname\\n" and NEWOBJ_EX with empty kwargs NEWOBJ. The object graph the output
builds is the one the input builds, shared references and memo numbering included.

    PROTO n                         PROTO 2 (always first, also for protocol 0/1 input)
    FRAME                           dropped
    SHORT_BINUNICODE, BINUNICODE8,  BINUNICODE (same UTF-8 bytes)
      UNICODE
    STRING, BINSTRING               SHORT_BINSTRING up to 255 bytes (a Python 2 str: decoded
                                    with the load's `encoding` either way); longer: refused
    MEMOIZE, PUT                    BINPUT / LONG_BINPUT with the index MEMOIZE implied
    GET                             BINGET / LONG_BINGET
    STACK_GLOBAL                    GLOBAL, when module and name are literal strings (pushed
                                    or fetched from the memo just before); else refused
    INT, LONG, LONG4                BININT1 / BININT2 / BININT / LONG1 (INT 00/01: NEWFALSE /
                                    NEWTRUE); an int over 255 bytes: refused
    FLOAT                           BINFLOAT
    SHORT_BINBYTES, BINBYTES,       _codecs.encode(<latin-1 text>, 'latin1'), as protocol 2
      BINBYTES8                     pickles bytes (_codecs.encode is in torch's default list)
    BYTEARRAY8                      builtins.bytearray(<bytes as above>), as protocol 2 does
    EMPTY_SET + MARK..ADDITEMS      builtins.set([...]) (EMPTY_SET alone stays)
    MARK..FROZENSET                 builtins.frozenset([...]) (not in torch's default list:
                                    `Downgraded.added` names it)
    MARK..LIST, MARK..DICT          EMPTY_LIST MARK..APPENDS, EMPTY_DICT MARK..SETITEMS
    NEWOBJ_EX with empty kwargs     NEWOBJ
    DUP                             BINPUT <unused index>, BINGET <it>
    POP of a literal not yet        dropped with it
      written
    NONE NEWTRUE NEWFALSE EMPTY_* TUPLE* APPEND(S) SETITEM(S) BUILD REDUCE NEWOBJ BINPERSID
    GLOBAL BININT* BINFLOAT LONG1 SHORT_BINSTRING MARK STOP: unchanged

Refused (`DowngradeError`; the file is hostile, broken or exotic): POP and POP_MARK of built
values (recursive tuples), EXT1/2/4 (the copyreg extension registry), NEXT_BUFFER and
READONLY_BUFFER (out-of-band buffers), PERSID (text persistent ids), INST and OBJ (protocol 0/1
calls), ADDITEMS to a set not built just before, a reference to a set from inside its own
items, a global whose meaning changes with the protocol (a dotted attribute path or a Python 2
name remapped by fix_imports, in a protocol >= 3/4 stream), a string, bytes or int too long for
a protocol-2 opcode, a truncated or malformed stream (pickletools cannot parse it; that includes
a protocol-0 STRING with non-ASCII escapes).

A string consumed by STACK_GLOBAL is never written; if the source fetches it again from the memo
(the same str object used as data, e.g. a dict key equal to a module name), it is written there,
stored under every memo index that held it, and shared from then on.

`open_downgraded(path)` applies it to a torch.save file (zip: `data.pkl`; legacy: its five
pickles) and returns a file object torch.load reads: the original's bytes, with only the
rewritten pickle (and, for a zip, its central directory) held in memory. That file I/O lives in
formats/downgraded.py (formats/torch_zip.py locates data.pkl); this module is the pure rewrite."""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import Any, cast

from .tables import TORCH_OPCODES  # what torch's load loop implements: the output uses nothing else

# Copied byte for byte: torch reads them, and their meaning does not depend on the protocol.
_KEEP = frozenset({"NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "EMPTY_LIST", "TUPLE", "TUPLE1",
                   "TUPLE2", "TUPLE3", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD",
                   "REDUCE", "NEWOBJ", "BINPERSID", "BININT", "BININT1", "BININT2", "BINFLOAT",
                   "SHORT_BINSTRING"})
_TEXT = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_BYTES = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_WHY = {
    "POP": "POP of a value already built (a recursive tuple?) has no protocol-2 equivalent torch "
           "reads",
    "POP_MARK": "POP_MARK (written for recursive tuples/frozensets) has no protocol-2 "
                "equivalent torch reads",
    "EXT1": "EXT1 refers to the copyreg extension registry", "EXT2": "EXT2 refers to the "
    "copyreg extension registry", "EXT4": "EXT4 refers to the copyreg extension registry",
    "NEXT_BUFFER": "NEXT_BUFFER needs an out-of-band buffer",
    "READONLY_BUFFER": "READONLY_BUFFER needs an out-of-band buffer",
    "PERSID": "PERSID (a text persistent id) is not a storage reference torch accepts",
    "INST": "INST (a protocol 0 call) is not rewritten", "OBJ": "OBJ (a protocol 1 call) is "
    "not rewritten",
}
_U32 = 1 << 32
_CODECS_ENCODE = b"c_codecs\nencode\n"


class DowngradeError(ValueError):
    """The stream cannot be rewritten into protocol-2 opcodes torch reads, with the same meaning."""


@dataclass(frozen=True)
class Downgraded:
    data: bytes  # the protocol-2 stream
    protocol: int  # what the source declared (0: no PROTO opcode, protocol 0 or 1)
    added: frozenset[str]  # globals the rewrite wrote that the source had as opcodes
    end: int  # offset just past the source's STOP


# --- output helpers -------------------------------------------------------------------------------
def _text(raw: bytes) -> bytes:
    if len(raw) >= _U32:
        raise DowngradeError(f"a {len(raw)}-byte string does not fit a protocol-2 BINUNICODE")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = pickle.encode_long(v)
    if len(raw) > 255:
        raise DowngradeError(f"an int of {len(raw)} bytes does not fit a protocol-2 LONG1")
    return b"\x8a" + bytes([len(raw)]) + raw


def _bytes(b: bytes) -> bytes:
    """bytes the way protocol 2 writes them: _codecs.encode(latin-1 text, 'latin1')."""
    return (_CODECS_ENCODE + _text(b.decode("latin-1").encode("utf-8")) + _text(b"latin1")
            + b"\x86R")


def _global(module: str, name: str) -> bytes:
    if "\n" in module or "\n" in name:
        raise DowngradeError(f"global {module!r} {name!r}: a newline cannot be written in GLOBAL")
    try:
        return b"c" + module.encode("utf-8") + b"\n" + name.encode("utf-8") + b"\n"
    except UnicodeEncodeError as exc:
        raise DowngradeError(f"global {module!r} {name!r} is not valid UTF-8") from exc


# --- the light stack ------------------------------------------------------------------------------
class _Lit:
    """A literal the source pushed: text (immutable) or an empty dict (NEWOBJ_EX kwargs), not
    necessarily written yet. `indices`: memo slots the source stored it in."""

    __slots__ = ("kind", "value", "written", "indices")
    indices: list[int]

    def __init__(self, kind: str, value: Any = None):
        self.kind, self.value, self.written, self.indices = kind, value, False, []

    def push(self) -> bytes:
        return _text(self.value.encode("utf-8", "surrogatepass")) if self.kind == "str" else b"}"


class _Pending:
    """A literal on top of the stack whose opcode is held back until something needs it."""

    __slots__ = ("lit", "get", "puts", "reput")
    puts: list[int]

    def __init__(self, lit: _Lit, get: int | None = None, reput: list[int] | None = None):
        self.lit, self.get, self.puts, self.reput = lit, get, [], reput or []


class _OpenSet:
    """EMPTY_SET being filled by ADDITEMS: written as builtins.set + a list until it closes."""

    __slots__ = ("puts",)

    def __init__(self) -> None:
        self.puts: list[int] = []


class _Rewriter:
    def __init__(self, data: bytes, start: int):
        f = io.BytesIO(data)
        f.seek(start)
        try:
            self.ops = list(pickletools.genops(f))
        except Exception as exc:  # ValueError, UnicodeDecodeError, struct.error...
            raise DowngradeError(f"malformed pickle: {type(exc).__name__}: {exc}"[:300]) from exc
        self.end = f.tell()
        self.data = data
        self.out = bytearray(b"\x80\x02")
        self.proto = 0
        self.memo: dict[int, Any] = {}  # index -> _Lit | _OpenSet | None (anything else)
        self.pending: list[_Pending] = []
        self.set_top: _OpenSet | None = None
        self.roles: dict[int, Any] = {}  # MARK op index -> what it opened (_OpenSet, "LIST"...)
        self.added: set[str] = set()
        self.closer: dict[int, str] = {}
        self.opener: dict[int, int] = {}
        marks: list[int] = []
        top, puts = -1, 0
        for i, (op, arg, _) in enumerate(self.ops):
            if op.name == "MARK":
                marks.append(i)
            elif pickletools.markobject in op.stack_before:
                if not marks:
                    raise DowngradeError(f"{op.name} without a MARK")
                m = marks.pop()
                self.closer[m], self.opener[i] = op.name, m
            if op.name in _PUTS:
                puts += 1
            if op.name in _PUTS | _GETS and op.name != "MEMOIZE":
                top = max(top, int(cast(int, arg)))
        if marks:
            raise DowngradeError("MARK never closed")
        self.scratch = max(top, puts) + 1  # a memo index the source never uses (for DUP)

    # -- writing --
    def flush(self) -> None:
        """Write every held-back literal, in order, with its memo stores."""
        for p in self.pending:
            lit = p.lit
            if p.get is not None and lit.written:
                self.out += _get(p.get)
            else:  # pushed here, or fetched from a slot whose push was never written
                self.out += lit.push()
                for j in p.reput:
                    self.out += _put(j)
                lit.written = True
            for j in p.puts:
                self.out += _put(j)
        self.pending.clear()

    def close_set(self) -> None:
        s, self.set_top = self.set_top, None
        assert s is not None  # called only while a set is open
        self.out += b"\x85R"  # TUPLE1 REDUCE: builtins.set(list)
        for j in s.puts:
            self.out += _put(j)
            if self.memo.get(j) is s:
                self.memo[j] = None

    def check_global(self, module: str, name: str) -> None:
        # A protocol >= 3 unpickler looks the name up as written; protocol 2 applies fix_imports
        # (Python 2 names), and only protocol >= 4 follows dotted attribute paths.
        if self.proto >= 3 and ((module, name) in _compat_pickle.NAME_MAPPING
                                or module in _compat_pickle.IMPORT_MAPPING):
            raise DowngradeError(f"global {module}.{name} would be renamed by protocol 2's "
                                 "fix_imports")
        if self.proto >= 4 and "." in name:
            raise DowngradeError(f"global {module} {name}: protocol 2 cannot name a dotted "
                                 "attribute path")

    def memo_index(self, name: str, arg: Any) -> int:
        i = len(self.memo) if name == "MEMOIZE" else int(arg)
        if not 0 <= i < _U32:
            raise DowngradeError(f"memo index {i} out of range")
        return i

    def opens_set(self, i: int) -> bool:
        j = i + 1
        while j < len(self.ops) and self.ops[j][0].name in _PUTS | {"FRAME"}:
            j += 1
        return j < len(self.ops) and self.ops[j][0].name == "MARK" and \
            self.closer.get(j) == "ADDITEMS"

    def raw(self, i: int) -> bytes:
        stop = self.ops[i + 1][2] if i + 1 < len(self.ops) else self.end
        return self.data[self.ops[i][2]:stop]

    # -- the walk --
    def run(self) -> Downgraded:
        for i, (op, arg, _pos) in enumerate(self.ops):
            name = op.name
            if self.set_top is not None:
                if name == "FRAME":
                    continue
                if name in _PUTS:
                    j = self.memo_index(name, arg)
                    self.memo[j] = self.set_top
                    self.set_top.puts.append(j)
                    continue
                if name == "MARK" and self.closer.get(i) == "ADDITEMS":
                    self.roles[i], self.set_top = self.set_top, None
                    self.out += b"("
                    continue
                self.close_set()
            self.step(i, name, arg)
        return Downgraded(bytes(self.out), self.proto, frozenset(self.added), self.end)

    def step(self, i: int, name: str, arg: Any) -> None:  # one branch per opcode
        out = self.out
        if name == "FRAME":
            return
        if name == "PROTO":
            if i != 0:
                raise DowngradeError("PROTO in the middle of the stream")
            if not 0 <= arg <= pickle.HIGHEST_PROTOCOL:
                raise DowngradeError(f"unsupported pickle protocol {arg}")
            self.proto = arg
            return
        if name in _TEXT:
            self.pending.append(_Pending(_Lit("str", arg)))
            return
        if name == "EMPTY_DICT":
            self.pending.append(_Pending(_Lit("dict")))
            return
        if name in _PUTS:
            j = self.memo_index(name, arg)
            if self.pending:
                p = self.pending[-1]
                p.puts.append(j)
                p.lit.indices.append(j)
                self.memo[j] = p.lit
            else:
                out += _put(j)
                self.memo[j] = None
            return
        if name in _GETS:
            j = self.memo_index(name, arg)
            if j not in self.memo:
                raise DowngradeError(f"{name} {j}: memo slot never stored")
            v = self.memo[j]
            if isinstance(v, _OpenSet):
                raise DowngradeError("a set refers to itself while its items are added")
            if isinstance(v, _Lit) and (v.kind == "str" or not v.written):
                reput = [] if v.written else [k for k in v.indices if self.memo.get(k) is v]
                self.pending.append(_Pending(v, get=j, reput=reput))
                return
            self.flush()
            out += _get(j)
            return
        if name == "STACK_GLOBAL":
            if len(self.pending) < 2 or any(p.lit.kind != "str" for p in self.pending[-2:]):
                raise DowngradeError("STACK_GLOBAL whose module and name are not literal strings")
            gname = self.pending.pop().lit.value
            module = self.pending.pop().lit.value
            self.flush()
            self.check_global(module, gname)
            out += _global(module, gname)
            return
        if name == "NEWOBJ_EX":
            if not self.pending or self.pending[-1].lit.kind != "dict":
                raise DowngradeError("NEWOBJ_EX with keyword arguments has no protocol-2 form")
            self.pending.pop()
            self.flush()
            out += b"\x81"  # NEWOBJ: cls.__new__(cls, *args), the same call without kwargs
            return
        if name == "POP" and self.pending:
            self.pending.pop()  # a literal never written: nothing to take back
            return
        self.flush()
        if name in _KEEP:
            out += self.raw(i)
        elif name == "STOP":
            out += b"."
        elif name == "GLOBAL":
            lines = self.raw(i)[1:].split(b"\n")
            try:
                module, gname = lines[0].decode("utf-8"), lines[1].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DowngradeError("GLOBAL name is not UTF-8") from exc
            self.check_global(module, gname)
            out += self.raw(i)
        elif name == "INT" and isinstance(arg, bool):  # protocol 0 spells True/False "01"/"00"
            out += b"\x88" if arg else b"\x89"
        elif name in ("INT", "LONG", "LONG1", "LONG4"):
            out += _int(arg)
        elif name == "FLOAT":
            out += b"G" + struct.pack(">d", arg)
        elif name in ("STRING", "BINSTRING"):
            raw = arg.encode("latin-1")
            if len(raw) > 255:
                raise DowngradeError(f"a {len(raw)}-byte Python 2 str has no protocol-2 form "
                                     "torch reads (SHORT_BINSTRING holds 255)")
            out += b"U" + bytes([len(raw)]) + raw
        elif name in _BYTES:
            out += _bytes(arg)
            self.added.add("_codecs.encode")
        elif name == "BYTEARRAY8":
            out += _global("builtins", "bytearray") + _bytes(bytes(arg)) + b"\x85R"
            self.added.update(("builtins.bytearray", "_codecs.encode"))
        elif name == "EMPTY_SET":
            if self.opens_set(i):
                out += _global("builtins", "set") + b"]"
                self.set_top = _OpenSet()
                self.added.add("builtins.set")
            else:
                out += b"\x8f"
        elif name == "MARK":
            closer = self.closer[i]
            if closer == "ADDITEMS":
                raise DowngradeError("ADDITEMS to a set that was not built just before")
            if closer == "FROZENSET":
                out += _global("builtins", "frozenset") + b"]"
                self.added.add("builtins.frozenset")
            elif closer == "LIST":
                out += b"]"
            elif closer == "DICT":
                out += b"}"
            self.roles[i] = closer
            out += b"("
        elif name in ("LIST", "FROZENSET"):
            out += b"e" + (b"\x85R" if name == "FROZENSET" else b"")
        elif name == "DICT":
            out += b"u"
        elif name == "ADDITEMS":
            role = self.roles.get(self.opener[i])
            if not isinstance(role, _OpenSet):
                raise DowngradeError("ADDITEMS to a set that was not built just before")
            out += b"e"
            self.set_top = role
        elif name == "DUP":  # the same object twice: store it in a spare slot, fetch it back
            out += _put(self.scratch) + _get(self.scratch)
        else:
            why = _WHY.get(name, f"{name} has no protocol-2 equivalent torch reads")
            raise DowngradeError(why)


def rewrite(data: bytes, start: int = 0) -> Downgraded:
    """Rewrite the pickle starting at `start` (up to its STOP) into protocol-2 opcodes."""
    return _Rewriter(bytes(data), start).run()


def downgrade(data: bytes) -> bytes:
    """One pickle stream (exactly: nothing after its STOP) rewritten into the protocol-2 opcodes
    torch's weights-only unpickler reads, building the same object graph. Nothing is executed.
    Raises DowngradeError."""
    d = rewrite(data)
    if d.end != len(data):
        raise DowngradeError(f"{len(data) - d.end} bytes after the pickle's STOP")
    return d.data


__all__ = ["downgrade", "rewrite", "Downgraded", "DowngradeError", "TORCH_OPCODES"]
