"""The symbolic stack machine: one step per opcode, emulating torch's weights-only unpickler
(values are descriptions; nothing is imported or called). Malformed input never raises: it
becomes a finding, and whatever was resolved before the fault is still reported."""

from __future__ import annotations

from typing import IO, Any

from ..codes import Code
from ..model import GlobalRef, WeightsOnlyVerdict
from .limits import BUDGET, DEFAULT_LIMITS, FileBudget, LimitHit, ScanLimits
from .opcodes import Desync, Fault, iter_opcodes
from .policy import numpy_dtype_class
from .result import PickleScan, StorageRef
from .tables import (
    DTYPE_SIZES,
    NON_DICT_TYPES,
    OPCODE_BYTE,
    PARAM_REBUILDS,
    SETITEM_TYPES,
    STORAGE_DTYPES,
    TENSOR_REBUILDS,
    TORCH_OPCODES,
)
from .values import (
    MARK,
    Glob,
    Mark,
    Obj,
    Opaque,
    Storage,
    SymDict,
    SymList,
    SymSet,
    Tensor,
    collect_tensors,
)
from .verdict import Verdict

# Symbolic values that are never a str when the real unpickler builds them (STACK_GLOBAL
# requires exact str). Call results, globals and persistent ids may be anything: dynamic.
_NEVER_STR = (int, float, bytes, tuple, type(None), SymDict, SymList, SymSet, Storage, Tensor,
              Mark)


class _Scanner(Verdict):
    def __init__(self, path: str, limits: ScanLimits):
        self.path = path
        self.limits = limits
        self.res = PickleScan()
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.seen_globals: dict[tuple[str, str], GlobalRef] = {}
        self.need_allow: dict[str, None] = {}  # ordered set, torch spelling
        self.blockers: dict[str, None] = {}
        self.storages: dict[str, StorageRef] = {}
        self.saved = 0  # values held on the metastack (below open MARKs)
        self.budget = BUDGET.get() or FileBudget(limits)
        self.max_opcodes = min(limits.max_opcodes, self.budget.opcodes)
        self.max_memo = min(limits.max_memo, self.budget.memo)


    # -- stack helpers --
    def pop(self) -> Any:
        if not self.stack:
            raise Fault("stack underflow")
        v = self.stack.pop()
        if v is MARK:
            raise Fault("unexpected MARK on stack")
        return v

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is MARK:
            raise Fault("stack underflow")
        return self.stack[-1]

    # -- main loop --
    def run(self, stream: IO[bytes]) -> PickleScan:
        res = self.res
        start = stream.tell()
        max_stack = self.limits.max_stack
        try:
            if self.budget.exhausted:
                raise LimitHit(f"not scanned: this file already hit a scan cap "
                             f"({self.budget.exhausted})")
            for name, arg in iter_opcodes(stream):
                res.opcodes += 1
                if res.opcodes > self.max_opcodes:
                    raise LimitHit(f"more than {self.max_opcodes} opcodes"
                                 + (" in this file" if self.max_opcodes < self.limits.max_opcodes
                                    else ""))
                self.step(name, arg)
                if len(self.stack) + self.saved > max_stack:
                    raise LimitHit(f"more than {max_stack} values on the pickle stack")
                if name == "STOP":
                    res.complete = True
                    break
        except LimitHit as exc:
            res.findings.append(Code.PICKLE_LIMIT.finding(self.path, f"{exc}; scan stopped"))
            self.block("scan limit")
            res.limit_hit = True
            if self.limits is DEFAULT_LIMITS:  # not a caller's own probe limits (pickle sniff)
                self.budget.exhausted = self.budget.exhausted or str(exc)
        except Fault as exc:
            if isinstance(exc, Desync):
                self._dynamic("<dynamic>", "FRAME", f"globals cannot be known statically: {exc}")
            res.findings.append(Code.PICKLE_MALFORMED.finding(
                self.path, f"malformed pickle at opcode {res.opcodes}: {exc}"))
            self.block("malformed pickle")
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError,
                KeyError, IndexError, TypeError, RecursionError) as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            res.findings.append(Code.PICKLE_MALFORMED.finding(
                self.path, f"malformed or truncated pickle after {res.opcodes} opcodes: {text}"))
            self.block("malformed pickle")
        res.end_offset = stream.tell() - start
        self.budget.opcodes -= min(res.opcodes, self.budget.opcodes)
        self.budget.memo -= min(len(self.memo), self.budget.memo)
        if not res.complete and not res.findings:
            res.findings.append(Code.PICKLE_MALFORMED.finding(self.path, "pickle has no STOP"))
            self.block("malformed pickle")
        if res.protocol is not None and res.protocol > 2:
            res.findings.append(Code.PICKLE_PROTOCOL.finding(
                self.path, f"pickle protocol {res.protocol}; torch's weights-only unpickler "
                "only implements protocol 2 opcodes",
                hint="re-save with torch.save (protocol 2) or run `ckptdoctor repair`"))
        res.storages = list(self.storages.values())
        res.verdict = WeightsOnlyVerdict(
            loads=not self.need_allow and not self.blockers,
            allowlist=list(self.need_allow),
            fixable=not self.blockers,
            blockers=list(self.blockers),
        )
        if res.root is not None:
            res.tensors = collect_tensors(res.root, self.limits)
        return res

    def step(self, name: str, arg: Any) -> None:  # one branch per opcode
        st = self.stack
        if name not in TORCH_OPCODES:
            self.block(f"Unsupported operand {OPCODE_BYTE[name]} ({name})")
        if name == "PROTO":
            self.res.protocol = arg
        elif name in ("FRAME",):
            pass
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                      "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
                      "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
                      "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            st.append(arg)
        elif name == "BYTEARRAY8":
            st.append(Opaque("bytearray"))
        elif name == "NONE":
            st.append(None)
        elif name == "NEWTRUE":
            st.append(True)
        elif name == "NEWFALSE":
            st.append(False)
        elif name == "EMPTY_TUPLE":
            st.append(())
        elif name == "EMPTY_LIST":
            st.append(SymList())
        elif name == "EMPTY_DICT":
            st.append(SymDict())
        elif name == "EMPTY_SET":
            st.append(SymSet())
        elif name == "MARK":
            if len(self.metastack) >= self.limits.max_marks:
                raise LimitHit(f"more than {self.limits.max_marks} nested MARKs")
            self.metastack.append(st)
            self.saved += len(st)
            self.stack = []
        elif name == "TUPLE":
            items = self._pop_mark_items()
            self.stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            st.append(tuple(items))
        elif name == "LIST":
            items = self._pop_mark_items()
            self.stack.append(SymList(items))
        elif name == "DICT":
            items = self._pop_mark_items()
            self.stack.append(SymDict(zip(items[::2], items[1::2], strict=False)))
        elif name == "FROZENSET":
            items = self._pop_mark_items()
            self.stack.append(SymSet(items))
        elif name == "APPEND":
            v = self.pop()
            target = self.top()
            self._append(target, [v])
        elif name == "APPENDS":
            items = self._pop_mark_items()
            self._append(self.top(), items)
        elif name == "SETITEM":
            v = self.pop()
            k = self.pop()
            self._setitems(self.top(), [(k, v)])
        elif name == "SETITEMS":
            items = self._pop_mark_items()
            self._setitems(self.top(), list(zip(items[::2], items[1::2], strict=False)))
        elif name == "ADDITEMS":
            items = self._pop_mark_items()
            target = self.top()
            if isinstance(target, SymSet):
                target.extend(items)
        elif name == "POP":
            if self.stack:
                self.stack.pop()
            else:
                self._pop_mark_items()
        elif name == "POP_MARK":
            self._pop_mark_items()
        elif name == "DUP":
            self.stack.append(self.top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not isinstance(arg, int) or arg < 0:
                raise Fault(f"invalid memo key {arg!r}")
            self._memo_put(arg, self.top())
        elif name == "MEMOIZE":
            self._memo_put(len(self.memo), self.top())
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise Fault(f"memo key {arg!r} read before it was written")
            self.stack.append(self.memo[arg])
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            self.stack.append(self.on_global(module, gname, "GLOBAL"))
        elif name == "STACK_GLOBAL":
            gname = self.pop()
            module = self.pop()
            if isinstance(module, _NEVER_STR) or isinstance(gname, _NEVER_STR):
                # A literal that is not a str: the unpickler raises here, nothing after runs.
                raise Fault("STACK_GLOBAL on a value that is not a str")
            if not isinstance(module, str) or not isinstance(gname, str):
                self._dynamic("<dynamic>", "STACK_GLOBAL",
                              "STACK_GLOBAL with a module or name computed at load time")
                self.block("dynamic global")
                self.stack.append(Glob("<dynamic>", "<dynamic>"))
            else:
                self.stack.append(self.on_global(module, gname, "STACK_GLOBAL"))
        elif name == "INST":
            module, _, gname = str(arg).partition(" ")
            g = self.on_global(module, gname, "INST")
            args = self._pop_mark_items()
            self.stack.append(Obj(g.match, g.match, tuple(args)))
        elif name == "OBJ":
            items = self._pop_mark_items()
            if not items:
                raise Fault("OBJ without a class")
            cls = items[0]
            if isinstance(cls, Glob):
                self.add_global(cls.name, cls.match, "OBJ")
                self.block("opcode OBJ is not supported by the weights-only unpickler")
                self.stack.append(Obj(cls.match, cls.match, tuple(items[1:])))
            else:
                self.block("OBJ on a computed class")
                self.stack.append(Obj(None, None, tuple(items[1:])))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            if name == "NEWOBJ_EX":
                self.pop()  # kwargs
            args = self.pop()
            cls = self.pop()
            if isinstance(cls, Glob):
                self.stack.append(Obj(cls.match, cls.match, args))
            else:
                self.block("NEWOBJ on a computed class")
                self.stack.append(Obj(None, None, args))
        elif name == "REDUCE":
            args = self.pop()
            func = self.pop()
            self.stack.append(self._reduce(func, args))
        elif name == "BUILD":
            state = self.pop()
            inst = self.top()
            self._build(inst, state)
        elif name in ("PERSID", "BINPERSID"):
            pid = arg if name == "PERSID" else self.pop()
            self.stack.append(self._persistent(pid))
        elif name in ("EXT1", "EXT2", "EXT4"):
            # The global is whatever copyreg's extension registry of the *loading* process maps
            # the code to: it cannot be resolved statically, so it is treated like a computed
            # STACK_GLOBAL (dangerous, CK107).
            label = f"<extension {arg}>"
            self._dynamic(label, name, f"{name} {arg}: the global is looked up in copyreg's "
                                       "extension registry of the loading process")
            self.block("copyreg extension codes are not supported by the weights-only unpickler")
            self.stack.append(Glob(label, label))
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            if name == "NEXT_BUFFER":
                self.stack.append(Opaque("out-of-band buffer"))
        elif name == "STOP":
            self.res.root = self.pop()
        else:  # pragma: no cover - genops knows no other opcodes
            raise Fault(f"unknown opcode {name}")

    def _pop_mark_items(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise Fault("MARK missing")
        self.stack = self.metastack.pop()
        self.saved -= len(self.stack)
        if any(v is MARK for v in items):
            raise Fault("nested MARK")
        return items

    def _memo_put(self, key: int, value: Any) -> None:
        if key not in self.memo and len(self.memo) >= self.max_memo:
            raise LimitHit(f"memo larger than {self.max_memo} entries"
                         + (" in this file" if self.max_memo < self.limits.max_memo else ""))
        self.memo[key] = value

    def _append(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, SymList):
            target.extend(items)
        else:
            self.block("APPEND to a non-list: torch only appends to lists")

    def _setitems(self, target: Any, pairs: list[tuple[Any, Any]]) -> None:
        if isinstance(target, SymDict):
            target.extend(pairs)
        elif isinstance(target, Obj) and target.type_name in SETITEM_TYPES:
            target.items.extend(pairs)
        else:
            what = target.type_name if isinstance(target, Obj) else type(target).__name__
            if not (isinstance(target, Obj) and target.type_name not in NON_DICT_TYPES):
                self._cve_pattern(f"SETITEM(S) into a {what}")
            if isinstance(target, Obj):
                target.items.extend(pairs)
            self.block(f"SETITEMS into {what}: torch only fills dict, OrderedDict and Counter "
                       "(allow-listing does not help)")

    def _reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Glob):
            self.block("REDUCE on a computed callable")
            return Obj(None, None, args)
        f = func.match
        targs = args if isinstance(args, tuple) else ()
        if f in TENSOR_REBUILDS and targs:
            st = targs[0] if isinstance(targs[0], Storage) else None
            offset = targs[1] if len(targs) > 1 and isinstance(targs[1], int) else 0
            shape = targs[2] if len(targs) > 2 and isinstance(targs[2], tuple) else ()
            shape = tuple(d for d in shape if isinstance(d, int))
            dt = targs[6] if f.endswith("_v3") and len(targs) > 6 else None
            dtype = dt.match[6:] if isinstance(dt, Glob) and dt.match[:6] == "torch." \
                and dt.match[6:] in DTYPE_SIZES else None
            return Tensor(st, offset, shape, dtype=dtype)
        if f in PARAM_REBUILDS and targs and isinstance(targs[0], Tensor):
            t = targs[0]
            return Tensor(t.storage, t.offset, t.shape, parameter=True, dtype=t.dtype)
        if f == "torch._tensor._rebuild_from_type_v2" and len(targs) >= 2:
            inner = targs[0]
            new_type = targs[1].match if isinstance(targs[1], Glob) else None
            if isinstance(inner, Glob) and inner.match in TENSOR_REBUILDS | PARAM_REBUILDS \
                    and len(targs) > 2 and isinstance(targs[2], tuple):
                t = self._reduce(inner, targs[2])
                if isinstance(t, Tensor):
                    return t
            return Obj(new_type, f, args)
        if f.endswith("multiarray._reconstruct") and targs and isinstance(targs[0], Glob):
            return Obj(targs[0].match, f, args)
        if f == "numpy.dtype":
            return Obj(numpy_dtype_class(targs[0] if targs else None), f, args)
        if f == "copyreg._reconstructor" and targs and isinstance(targs[0], Glob):
            return Obj(targs[0].match, f, args)
        return Obj(f, f, args)

    def _build(self, inst: Any, state: Any) -> None:
        if isinstance(inst, Tensor):
            return
        if isinstance(inst, Glob):  # BUILD on the class object itself: setattr on code
            self._hostile_pattern(f"BUILD on the class {inst.match} itself (sets attributes "
                                  "of code, e.g. torch's legacy dump_patches file writer)")
        if isinstance(inst, Obj):
            inst.state = state
            self.on_build_type(inst.type_name, f"the result of {inst.func}")
        else:
            self.on_build_type(None, type(inst).__name__)

    def _persistent(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage"):
            # zip: ('storage', StorageType, key, location, numel)
            # legacy: ('storage', StorageType, root_key, location, size, view_metadata)
            stype = pid[1] if len(pid) > 1 else None
            key = str(pid[2]) if len(pid) > 2 else "?"
            loc = str(pid[3]) if len(pid) > 3 else "?"
            numel = pid[4] if len(pid) > 4 and isinstance(pid[4], int) else None
            sname = stype.match.rpartition(".")[2] if isinstance(stype, Glob) else ""
            dtype, size = STORAGE_DTYPES.get(sname, ("unknown", 1))
            ref = self.storages.get(key)
            if ref is None:
                ref = StorageRef(key, dtype, size, loc, numel)
                self.storages[key] = ref
            return Storage(key, dtype, size, loc, numel)
        if not (isinstance(pid, (tuple, int))):
            self.block("persistent id that is not a storage tuple")
        elif isinstance(pid, tuple):
            self.block("persistent id that is not a storage")
        return Opaque("persistent")
