"""The transcoding load: read a checkpoint without running any code from it.

`torch.load(weights_only=True)` inside `torch.serialization.safe_globals(...)` where every
offending global name is registered with an inert stand-in (ckptdoctor.standins), never the real
class. torch's weights-only unpickler stays the safety boundary: it only calls what is in that
table, and the stand-ins only record their arguments. Which names may be registered:

* DATA names (ckptdoctor's policy table: numpy arrays/scalars/dtypes, enums, Namespace, ...);
* UNKNOWN names only when the user vouched for them (`allow`), or when a rule consumes them in
  a known context (`Rule.covers`, e.g. the accelerate PartialState inside TrainingArguments);
* DANGEROUS names never: the file is refused before anything is loaded.

Two things the stand-ins of standins.py cannot do on their own, added here:
* dict subclasses (`collections.defaultdict`, Lightning's AttributeDict) receive SETITEM(S),
  which torch allows only on plain dict/OrderedDict/Counter, so their stand-in returns a plain
  dict and records what it was (`Marks`);
* a kept object is re-pickled the way it was built, so the stand-in records whether the pickle
  called the class (REDUCE) or only its __new__ (NEWOBJ)."""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import FileInfo
from ..pickles.downgrade import Downgraded  # protocol > 2 pickles rewritten into protocol 2
from ..pickles.policy import (
    DangerousGlobalError,
    NotVouchedError,
    Verdict,
    allow_flags,
    require,
    torch_name,
    vet,
)
from ..standins import StandIn, transcoding_globals

# Dict and list subclasses: their stand-in must return a plain dict / list (torch only runs
# SETITEM(S) on dict/OrderedDict/Counter and APPEND(S) on list, whatever is allow-listed).
LIST_SUBCLASSES = frozenset({"collections.deque"})
DICT_SUBCLASSES = frozenset({
    "collections.defaultdict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
})
_MISSING_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_MAX_RETRIES = 8


class TranscodeRefused(Exception):
    """The file must not (or cannot) be transcoded. `.names`: the globals responsible."""

    def __init__(self, message: str, names: Iterable[str] = (), hint: str = "",
                 dangerous: bool = False):
        super().__init__(message)
        self.names = list(names)
        self.hint = hint
        self.dangerous = dangerous


# --- marks: what the dict-subclass stand-ins turned into plain dicts ---------------------------
@dataclass
class Mark:
    name: str  # the global, e.g. collections.defaultdict
    args: tuple  # e.g. (default_factory,)
    obj: Any = field(repr=False, default=None)  # the dict (kept alive so its id stays unique)


class Marks:
    """id(plain dict) -> Mark, filled while one transcoding load runs."""

    def __init__(self) -> None:
        self.by_id: dict[int, Mark] = {}

    def get(self, obj: Any) -> Mark | None:
        m = self.by_id.get(id(obj))
        return m if m is not None and m.obj is obj else None


_active = threading.local()


def _current_marks() -> Marks | None:
    return getattr(_active, "marks", None)


@functools.cache
def dict_standin(name: str, kind: type = dict) -> type:
    """A class whose construction (REDUCE or NEWOBJ) returns a plain, marked dict (or list)."""

    def __new__(cls, *args, **kwargs):
        d = kind()
        marks = _current_marks()
        if marks is not None:
            marks.by_id[id(d)] = Mark(name, args, d)
        return d

    module, _, qual = name.rpartition(".")
    return type(qual, (), {"__new__": __new__, "__module__": module, "__qualname__": qual,
                           "standin_name": name})


# one recording subclass per StandIn class (a dict, not functools.cache: mypy does not see a
# class object as Hashable)
_RECORDING: dict[type[StandIn], type[StandIn]] = {}


def recording(cls: type[StandIn]) -> type[StandIn]:
    """A subclass of a StandIn class that notes when the pickle *called* the class (REDUCE:
    `cls(*args)` runs __init__) rather than NEWOBJ (`cls.__new__(cls, *args)` only)."""
    if cls in _RECORDING:
        return _RECORDING[cls]

    def __init__(self: StandIn, *args: Any, **kwargs: Any) -> None:
        self.__dict__["via_reduce"] = True

    sub = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                      "__qualname__": cls.__qualname__,
                                      "standin_name": cls.standin_name})
    return _RECORDING.setdefault(cls, sub)


def via_reduce(obj: StandIn) -> bool:
    return bool(obj.__dict__.get("via_reduce", False))


# --- names and policy ---------------------------------------------------------------------------
def offending_names(info: FileInfo | None) -> list[str]:
    """Every non-default global the file references, in torch's spelling (what its unpickler
    compares), BUILD-time numpy dtype classes included."""
    names: list[str] = []
    if info is not None:
        if info.weights_only is not None:
            names += info.weights_only.allowlist
        names += [g.match_name or g.name for g in info.globals]
    out = []
    for n in names:
        mod, _, qual = n.rpartition(".")
        tm, tq = torch_name(mod, qual)
        t = f"{tm}.{tq}" if tm else tq
        if vet(t).verdict is not Verdict.TORCH:
            out.append(t)
    return list(dict.fromkeys(out))


def check_policy(names: Iterable[str], allow: Iterable[str], covered: Iterable[str] = ()
                 ) -> None:
    """TranscodeRefused unless every name passes policy.vet, `allow` (the user's --allow) and
    `covered` (names a reviewed repair rule consumes, registered as inert stand-ins only)
    counting as vouched."""
    try:
        require(names, set(allow) | set(covered))
    except DangerousGlobalError as exc:
        raise TranscodeRefused(
            "references code-executing global(s): " + ", ".join(exc.names)
            + "; a file that needs them can run code when loaded, so it is not rewritten",
            exc.names, hint="do not load this file; restore it from a trusted source",
            dangerous=True) from None
    except NotVouchedError as exc:
        raise TranscodeRefused(
            "references global(s) of unknown safety: " + ", ".join(exc.names),
            exc.names, hint="if you trust the file, vouch for them: "
                            + allow_flags(exc.names)) from None


def standin_entries(names: Iterable[str], capture_types: bool = True) -> list[tuple[Any, str]]:
    """(stand-in, name) pairs for safe_globals: standins.transcoding_globals, with dict
    subclasses returning plain dicts and StandIn classes recording REDUCE vs NEWOBJ."""
    out = []
    for obj, name in transcoding_globals(names):
        if name in DICT_SUBCLASSES:
            obj = dict_standin(name)
        elif name in LIST_SUBCLASSES:
            obj = dict_standin(name, list)
        elif isinstance(obj, type) and issubclass(obj, StandIn):
            obj = recording(obj)
        elif not capture_types and name.startswith("ckptdoctor."):
            continue
        out.append((obj, name))
    return out


# --- the load ----------------------------------------------------------------------------------
@dataclass
class Transcoded:
    obj: Any
    marks: Marks
    names: list[str]  # what was registered
    # pickles/downgrade.py: set when the pickle (protocol > 2) was rewritten into protocol-2
    # opcodes before this load; the file itself cannot load and must be re-saved.
    downgraded: Downgraded | None = None


def _torch_load(path: Path, mmap: bool = True) -> Any:
    import torch

    if mmap and isinstance(path, (str, os.PathLike)):  # not a downgraded view (a file object)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used with files saved with" not in str(exc):
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def load_registered(path: Path, entries: list[tuple[Any, str]], mmap: bool = True) -> Any:
    """torch.load(weights_only=True) with exactly `entries` registered (and nothing the
    process registered before: those are set aside for the duration)."""
    import torch

    with _registry_lock:
        saved = torch.serialization.get_safe_globals()
        torch.serialization.clear_safe_globals()
        try:
            with torch.serialization.safe_globals(list(entries)):
                return _torch_load(path, mmap)
        finally:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(saved)


_registry_lock = threading.RLock()


def transcoding_load(path: Path, names: list[str], allow: Iterable[str] = (),
                     covered: Iterable[str] = ()) -> Transcoded:
    """Load `path` with stand-ins for `names`. A global the static scan did not list (it
    should not happen) is checked against the same policy and added, a few times at most."""
    names = list(dict.fromkeys(names))
    check_policy(names, allow, covered)
    marks = Marks()
    source: Any = path
    try:
        for _ in range(_MAX_RETRIES):
            entries = standin_entries(names)
            _active.marks = marks
            try:
                obj = load_registered(source, entries)
            except Exception as exc:  # torch raises UnpicklingError, RuntimeError...
                missing = _MISSING_GLOBAL.search(str(exc))
                if missing and missing.group(1) not in names:
                    extra = missing.group(1)
                    check_policy([extra], allow, covered)
                    names.append(extra)
                    marks = Marks()
                    continue
                # Protocol > 2 opcodes (FRAME, MEMOIZE, STACK_GLOBAL...): read the file again
                # through pickles/downgrade.py, which rewrites its pickle(s) into protocol 2
                # without running anything (the static scan already vouched for its globals).
                if source is path and "Unsupported operand" in str(exc):
                    source = _open_downgraded(path)
                    extra = [n for n in sorted(source.info.added) if n not in names]
                    check_policy(extra, allow, covered)  # builtins.frozenset/set/bytearray...
                    names += extra
                    marks = Marks()
                    continue
                raise TranscodeRefused(f"cannot be read even with stand-ins: {_key_line(exc)}",
                                       hint=_load_hint(exc)) from exc
            finally:
                _active.marks = None
            return Transcoded(obj, marks, names,
                              downgraded=None if source is path else source.info)
        raise TranscodeRefused("too many globals surfaced only at load time")
    finally:
        if source is not path:
            source.close()


def _open_downgraded(path: Path) -> Any:
    """The file with its pickle(s) rewritten into protocol 2 (pickles/downgrade.py)."""
    from ..formats.downgraded import open_downgraded
    from ..pickles.downgrade import DowngradeError

    try:
        return open_downgraded(path)
    except DowngradeError as exc:
        raise TranscodeRefused(
            f"its pickle protocol > 2 cannot be rewritten into protocol 2: {exc}",
            hint="load it once in a trusted environment and torch.save it again") from exc


def _key_line(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "Unsupported" in line or "GLOBAL" in line or "Can only" in line:
            return line.strip()[:300]
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _load_hint(exc: BaseException) -> str:
    text = str(exc)
    if "Unsupported operand" in text:
        return ("the pickle uses a protocol > 2, which torch's weights-only unpickler cannot "
                "read; load it once in a trusted environment and torch.save it again")
    if "central directory" in text or isinstance(exc, EOFError):
        return "the file is truncated; use an earlier checkpoint"
    return ""


__all__ = ["TranscodeRefused", "Transcoded", "Marks", "Mark", "DICT_SUBCLASSES", "LIST_SUBCLASSES",
           "offending_names", "check_policy", "standin_entries", "transcoding_load",
           "load_registered", "dict_standin", "recording", "via_reduce"]
