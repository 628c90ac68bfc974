"""Turn a load failure into a finding: a stable code, the cause in plain words, which framework
object put the offending global into the file, and a fix ready to paste.

Works from the error alone; the static FileInfo (globals, complete allow-list) and the layout
name make it precise. Nothing here imports torch."""

from __future__ import annotations

import pickletools
import re
import shlex
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import PurePath
from typing import Any

from .codes import Code
from .model import FileInfo, Finding, FormatName, GlobalClass
from .pickles.policy import Verdict, classify, vet
from .standins import numpy_location, numpy_major

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch wraps weights-only errors in these lines; the cause is elsewhere in the message
_BOILERPLATE = ("Weights only load failed", "(1)", "(2)", "Please file an issue",
                "Check the documentation", "In PyTorch 2.6")
_OPCODES = {ord(op.code): op for op in pickletools.opcodes}
_NAME_PATTERNS = [
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"but got <class '([^']+)'>"),
]
_GLOBAL_ERRORS = ("Unsupported global", "Can only build", "Can only create new object",
                  "unrecognized function", "is blocked", "must be imported to load",
                  "NotVouchedError")
_UNFIXABLE_ERRORS = ("Can only SETITEM", "Can only append", "Can only extend")


def key_line(error: BaseException | str) -> str:
    """The informative line of an error message (torch puts the cause after boilerplate)."""
    text = _ANSI.sub("", error if isinstance(error, str) else str(error))
    # drop torch's advice that follows the cause on the same line
    for tail in (". This is an internal miniz error", " Please use `torch.serialization"):
        text = text.split(tail)[0]
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return (useful or lines or [""])[0][:500]


@dataclass(frozen=True)
class Producer:
    what: str  # the framework object that put the globals there
    fixed_in: str = ""  # the framework release that fixed (or did not fix) loading it


def producer(path: str, names: set[str], layout: str | None = None) -> Producer | None:
    """Which framework object wrote these globals, from the file name, globals and layout.
    Each framework's layout module owns its own description (Layout.producer); what is left
    here is torch- and numpy-level knowledge no framework owns."""
    from .layouts import PRODUCERS

    base = PurePath(path).name.lower()
    lay = (layout or "").lower()

    def has(pred) -> bool:
        return any(pred(n) for n in names)

    numpy_array = has(lambda n: n.endswith("multiarray._reconstruct"))
    for owner in PRODUCERS:
        found = owner.producer(base, names, lay)
        if found is not None:
            return Producer(*found)
    if fnmatch(base, "scheduler*.pt") and has(lambda n: n.endswith(".getattr")):
        return Producer("OneCycleLR's `anneal_func` pickled by torch < 2.4",
                        "torch >= 2.4 stores `_anneal_func_type` instead (pytorch PR #123775)")
    if numpy_array:
        return Producer("a numpy array in the pickled state (often np.random.get_state())")
    if has(lambda n: n.endswith("multiarray.scalar")):
        return Producer("numpy scalars (np.float64, np.int64, ...) in metric or callback state")
    if "argparse.Namespace" in names:
        return Producer("an argparse.Namespace of training arguments")
    return None


def _numpy_skew(names: set[str]) -> str:
    major = numpy_major()
    if major is not None and major >= 2 and any(n.startswith("numpy.core.") for n in names):
        return (" It was written under numpy 1 (numpy.core.* names) and this is numpy 2: "
                "allow-listing numpy 2's objects registers them as numpy._core.*, so only "
                "(obj, \"numpy.core...\") tuple aliases load it.")
    if major is not None and major < 2 and any(n.startswith("numpy._core.") for n in names):
        return (" It was written under numpy 2 (numpy._core.* names) and this is numpy 1, "
                "which cannot import numpy._core at all: upgrade numpy or repair the file.")
    return ""


def _object_name(location: str) -> str | None:
    """module.qualname the object at `location` reports, from already imported modules only."""
    parts = location.split(".")
    for i in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:i]))
        if obj is None:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        if obj is None:
            return None
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    return None


def safe_globals_snippet(names: list[str], path: str | None = None,
                         allow: tuple[str, ...] = ()) -> str:
    """Python that loads the file with torch's own safe_globals: the names that pass
    policy.vet (reviewed data, and `allow`), with `(obj, "name")` tuple aliases where the object
    lives elsewhere on this machine (numpy.core vs numpy._core) or reports another name.
    Code-executing names are left out; unknown ones are only named in a comment."""
    items: list[str] = []
    modules = {"torch"}
    unvetted: list[str] = []
    for name in dict.fromkeys(names):
        v = vet(name, allow)
        if v.verdict is Verdict.UNKNOWN:
            unvetted.append(name)
        if v.verdict in (Verdict.TORCH, Verdict.DANGEROUS, Verdict.UNKNOWN):
            continue
        loc = numpy_location(name)
        modules.add("numpy" if loc.startswith("numpy.") else loc.rpartition(".")[0])
        reported = _object_name(loc)
        alias = loc != name or (reported is not None and reported != name)
        items.append(f'({loc}, "{name}")' if alias else loc)
    target = "path" if path is None else repr(str(path))
    note = ("# not included, of unknown safety (add them only if you trust the file): "
            + ", ".join(unvetted) + "\n") if unvetted else ""
    return (note + f"import {', '.join(sorted(m for m in modules if m))}\n"
            f"with torch.serialization.safe_globals([{', '.join(items)}]):\n"
            f"    ckpt = torch.load({target}, weights_only=True)")


def _error_of(exc_or_attempt: Any) -> tuple[str, str, str]:
    """(error type, informative line, strategy) of an exception or a loader Attempt."""
    if isinstance(exc_or_attempt, BaseException):
        return type(exc_or_attempt).__name__, key_line(exc_or_attempt), "weights_only"
    a = exc_or_attempt
    return a.error_type, a.error, a.strategy


def diagnose(path: str, exc_or_attempt: Any, static: FileInfo | None = None,
             layout: str | None = None) -> Finding:
    """A finding for one failed load (an exception from torch.load or a loader Attempt)."""
    path = str(path)
    etype, text, strategy = _error_of(exc_or_attempt)
    names = {m.group(1) for p in _NAME_PATTERNS for m in p.finditer(text)}
    if static is not None:
        names |= {g.name for g in static.globals}
        if static.weights_only is not None:
            names |= set(static.weights_only.allowlist)
    made_by = producer(path, names, layout)
    who = f" It comes from {made_by.what}." if made_by else ""
    detail: dict[str, Any] = {"error_type": etype, "error": text, "strategy": strategy}
    if made_by:
        detail["producer"] = made_by.what
        if made_by.fixed_in:
            detail["fixed_in"] = made_by.fixed_in
    repair = f"ckptdoctor repair {shlex.quote(path)}"

    def found(code: Code, message: str, hint: str = repair) -> Finding:
        return code.finding(path, message, hint, **detail)

    if (static is not None and static.format == FormatName.EMPTY) or (etype == "EOFError"
                                                                      and not text):
        return found(Code.EMPTY_FILE, "the file is empty (0 bytes): the save never wrote it, "
                     "or it was cut off at once", "re-save it, or resume from an earlier "
                     "checkpoint")
    if etype == "EOFError" or "Ran out of input" in text:
        return found(Code.LEGACY_TRUNCATED, "the pickle stream ends early: the file is "
                     "truncated", "resume from an earlier checkpoint")
    if "failed finding central directory" in text:
        return found(Code.ZIP_TRUNCATED, "the zip archive torch.save writes is truncated (its "
                     "central directory at the end is missing): the save or copy was cut off",
                     "resume from an earlier checkpoint; compare the size with the source")
    if "failed locating file" in text or "Only persistent_load of storage" in text:
        cause = ("a tensor storage record the pickle references is missing from the archive"
                 if "failed locating file" in text else
                 "the pickle references a persistent object that is not a torch storage")
        return found(Code.ZIP_STORAGE_MISSING, cause, "resume from an earlier checkpoint")
    st = _safetensors_code(text)
    if st is not None:
        return found(st[0], st[1], "re-export it, or resume from an earlier checkpoint")
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand:
        op = _OPCODES.get(int(operand.group(1)))
        opname = op.name if op else operand.group(1)
        if op is not None and op.proto > 2:
            return found(Code.PICKLE_PROTOCOL,
                         f"the file was pickled with protocol {op.proto} or later (opcode "
                         f"{opname}); torch's weights-only unpickler only reads protocol 2, "
                         "which torch.save uses by default")
        return found(Code.LOAD_FAILS, f"the pickle uses opcode {opname}, which torch's "
                     "weights-only unpickler does not implement")
    if "Invalid magic number" in text:
        return found(Code.LOAD_FAILS, "not a torch.save file (a plain pickle, or a corrupt "
                     "legacy torch file)", "load it with the tool that wrote it")
    if "TorchScript" in text:
        return found(Code.LOAD_FAILS, "a TorchScript archive: it holds code, not just "
                     "weights", "load it with torch.jit.load only if you trust its source")
    dangerous = sorted(n for n in names if classify(n) is GlobalClass.DANGEROUS)
    if dangerous or etype == "DangerousGlobalError":
        return found(Code.LOAD_FAILS, "the file references code-executing global(s) ("
                     + (", ".join(dangerous) or text) + "): loading it can run code, so "
                     f"ckptdoctor refuses to load it, even with --trust.{who}",
                     "do not load it; re-create the checkpoint from a trusted source")
    verdict = static.weights_only if static is not None else None
    if (verdict is not None and not verdict.fixable) or text.startswith(_UNFIXABLE_ERRORS):
        blockers = verdict.blockers if verdict is not None and verdict.blockers else [text]
        return found(Code.LOAD_FAILS, "torch.load(weights_only=True) cannot rebuild this "
                     f"file whatever is allow-listed: {blockers[0]}.{who}",
                     f"{repair}   (re-saves it in a form torch loads)")
    if not (any(marker in text or marker == etype for marker in _GLOBAL_ERRORS)
            or (verdict is not None and not verdict.loads)):
        return found(Code.LOAD_FAILS, f"loading fails: {etype}: {text}" if text else
                     f"loading fails: {etype}")

    # Globals torch does not allow by default: the file loads with the right allow-list.
    if verdict is not None:
        allowlist = list(verdict.allowlist)
    else:  # from the error only: torch names one global per failure, more may follow
        allowlist = sorted(n for n in names if classify(n) is not GlobalClass.TORCH_ALLOWED)
    unknown = sorted(n for n in names if classify(n) is GlobalClass.UNKNOWN)
    message = ("plain torch.load(weights_only=True) rejects it: the pickle references "
               "global(s) torch does not allow by default ("
               + (", ".join(allowlist) or text) + f").{who}" + _numpy_skew(names))
    hint = [repair, "or keep the file and load it with:", safe_globals_snippet(allowlist, path)]
    if unknown:
        message += (" Of these, " + ", ".join(unknown) + " are of unknown safety: importing "
                    "them runs their module's code.")
        hint.append("(ckptdoctor: --allow " + " --allow ".join(unknown)
                    + " if you trust the file)")
    if made_by and made_by.fixed_in:
        hint.append(made_by.fixed_in)
    detail["allowlist"] = allowlist
    # CK602: plain weights_only fails but an allow-list loads it, which only a static scan
    # proves; when the allow-list strategy failed too it is CK601
    code = Code.LOAD_NEEDS_ALLOW if strategy == "weights_only" and verdict is not None \
        else Code.LOAD_FAILS
    return found(code, message, "\n".join(hint))


def _safetensors_code(text: str) -> tuple[Code, str] | None:
    if "header too small" in text:
        return Code.ST_HEADER_SMALL, "the safetensors file is too small to hold its header"
    if "invalid header length" in text or "header too large" in text:
        return Code.ST_HEADER_LENGTH, ("the safetensors header length (first 8 bytes) is "
                                       "invalid: the file is corrupt or not safetensors")
    if "incomplete metadata" in text or "MetadataIncompleteBuffer" in text:
        return Code.ST_COVERAGE, ("the safetensors data is shorter than its header says "
                                  "(file not fully covered): the file is truncated")
    if "invalid JSON in header" in text or "InvalidHeaderDeserialization" in text:
        return Code.ST_HEADER_JSON, "the safetensors header is not valid JSON"
    return None


__all__ = ["diagnose", "key_line", "safe_globals_snippet", "producer", "Producer"]
