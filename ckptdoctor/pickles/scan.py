"""Static pickle analysis: walk the opcodes with `pickletools.genops`, run a *symbolic* stack
machine (values are descriptions, nothing is imported or called), and emulate the decisions of
torch's weights-only unpickler (torch/_weights_only_unpickler.py) for every opcode, including
the BUILD-time type checks that `torch.serialization.get_unsafe_globals_in_checkpoint` misses.

Why not pickletools alone: genops gives opcodes, but STACK_GLOBAL names live on the stack or in
the memo, BUILD targets are results of earlier calls, and tensor shapes are call arguments, so a
stack machine is needed to resolve them. Malformed input never raises: it becomes a finding and
whatever was resolved before the fault is still reported (a payload followed by garbage is still
caught).

This module is the scan's front door (`scan_stream`, `scan_bytes` and every name callers use).
Its parts, by concept: `tables` (what torch's unpickler implements, storage dtypes), `limits`
(caps and the per-file budget), `opcodes` (the opcode walk), `values` (symbolic values and
reading them), `machine` (the stack machine), `verdict` (torch's decisions and hostile
patterns), `result` (PickleScan)."""

from __future__ import annotations

import io
from typing import IO

from .limits import DEFAULT_LIMITS, FileBudget, ScanLimits, current_budget, file_budget
from .machine import _Scanner
from .opcodes import iter_opcodes
from .result import PickleScan, StorageRef
from .tables import CVE_WEIGHTS_ONLY, DTYPE_SIZES, STORAGE_DTYPES, TORCH_OPCODES
from .values import (
    MARK,
    Glob,
    Obj,
    Opaque,
    Storage,
    SymDict,
    SymList,
    SymSet,
    Tensor,
    collect_tensors,
    lookup,
    top_keys,
)


def scan_stream(stream: IO[bytes], path: str = "",
                limits: ScanLimits = DEFAULT_LIMITS) -> PickleScan:
    """Scan ONE pickle starting at the stream's position; the stream is left after STOP."""
    return _Scanner(path, limits).run(stream)


def scan_bytes(data: bytes, path: str = "", limits: ScanLimits = DEFAULT_LIMITS) -> PickleScan:
    return scan_stream(io.BytesIO(data), path, limits)


__all__ = ["scan_stream", "scan_bytes", "PickleScan", "StorageRef", "ScanLimits",
           "DEFAULT_LIMITS", "FileBudget", "current_budget", "file_budget", "iter_opcodes",
           "collect_tensors", "lookup", "top_keys", "MARK", "Glob", "Obj", "Opaque", "Storage",
           "SymDict", "SymList", "SymSet", "Tensor", "CVE_WEIGHTS_ONLY", "DTYPE_SIZES",
           "STORAGE_DTYPES", "TORCH_OPCODES"]
