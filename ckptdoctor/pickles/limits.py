"""Scan caps: ScanLimits per pickle and the FileBudget all scans of one file share."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ScanLimits:
    """Hard caps so hostile input costs bounded time and memory (each hit is a finding)."""

    max_opcodes: int = 50_000_000  # per FILE (all its pickles together), see FileBudget
    max_memo: int = 1_000_000  # memo entries, per file
    max_walk_nodes: int = 5_000_000
    max_depth: int = 200
    max_marks: int = 100_000  # open MARKs (each costs a list; pickle.dumps never nests this deep)
    max_stack: int = 250_000  # values on the stack (all MARK levels); pickle.dumps batches by 1000


DEFAULT_LIMITS = ScanLimits()


class FileBudget:
    """What the scans of ONE file may still spend: the caps apply to the whole file (every
    member of a zip, every item of a shard, every stacked pickle), not to each pickle, so a
    file of twenty bombs costs what one does. Opened by `file_budget()` (formats.detect_file
    does); a scan outside one gets a fresh budget of its own."""

    def __init__(self, limits: ScanLimits = DEFAULT_LIMITS):
        self.opcodes = limits.max_opcodes
        self.memo = limits.max_memo
        self.exhausted = ""  # the first cap hit, once one was


BUDGET: contextvars.ContextVar[FileBudget | None] = contextvars.ContextVar(
    "ckptdoctor_file_budget", default=None)


def current_budget() -> FileBudget | None:
    """The budget of the file being scanned (None outside `file_budget`)."""
    return BUDGET.get()


@contextlib.contextmanager
def file_budget(limits: ScanLimits = DEFAULT_LIMITS) -> Iterator[FileBudget]:
    """Scans inside this block share one FileBudget (nested blocks reuse the outer one)."""
    outer = BUDGET.get()
    if outer is not None:
        yield outer
        return
    budget = FileBudget(limits)
    token = BUDGET.set(budget)
    try:
        yield budget
    finally:
        BUDGET.reset(token)



class LimitHit(Exception):
    """A ScanLimits cap was hit (reported as CK106, not as a malformed pickle)."""
