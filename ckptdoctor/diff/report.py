"""What a diff reports: sections, one compared tensor pair, prefix renames, the training state
of a side, the whole report (with its resume-equivalence reasons), and DiffError (CK901)."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..codes import Code
from ..errors import DiffError
from ..model import SCHEMA_VERSION, Finding, sorted_findings


class Section(str, enum.Enum):
    WEIGHTS = "weights"
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    RNG = "rng"
    OTHER = "other"


RANK_FILE = re.compile(r"(?:rng_state_|random_states_|zero_pp_rank_|mp_rank_|^__|rank_?)(\d+)")


def unreadable(path: Any, message: str, hint: str = "") -> DiffError:
    return DiffError(Code.DIFF_UNREADABLE.finding(str(path), message, hint))


@dataclass
class TensorDiff:
    """One tensor present on both sides (key as A names it; key_b when a rename mapped it)."""

    section: Section
    key: str
    key_b: str
    dtype_a: str
    dtype_b: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    equal: bool = False  # same dtype, shape and bytes
    close: bool = False  # every element within atol + rtol * |b| (NaN matches NaN)
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    norm_a: float | None = None
    norm_b: float | None = None
    nan_a: int = 0
    inf_a: int = 0
    nan_b: int = 0
    inf_b: int = 0
    zero_a: bool = False
    zero_b: bool = False
    scalar_a: float | None = None  # the value of a one-element tensor (e.g. Adam's step)
    scalar_b: float | None = None

    @property
    def norm_ratio(self) -> float | None:
        if self.norm_a is None or self.norm_b is None:
            return None
        if self.norm_a == 0:
            return None if self.norm_b == 0 else math.inf
        return self.norm_b / self.norm_a

    def to_json(self) -> dict[str, Any]:
        out = {"section": self.section.value, "key": self.key, "equal": self.equal,
               "close": self.close, "dtype": [self.dtype_a, self.dtype_b],
               "shape": [list(self.shape_a), list(self.shape_b)],
               "max_abs": num(self.max_abs), "max_rel": num(self.max_rel),
               "cosine": num(self.cosine), "norm": [num(self.norm_a), num(self.norm_b)],
               "norm_ratio": num(self.norm_ratio), "nan": [self.nan_a, self.nan_b],
               "inf": [self.inf_a, self.inf_b], "all_zero": [self.zero_a, self.zero_b]}
        if self.key_b != self.key:
            out["key_b"] = self.key_b
        return out


def num(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return x


@dataclass
class Rename:
    """Keys of A that B names with a different leading prefix (`old` -> `new`)."""

    section: Section
    old: str
    new: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section.value, "from": self.old, "to": self.new,
                "count": self.count}


@dataclass
class TrainingState:
    step: Any = None
    epoch: Any = None
    lr: Any = None
    has: dict[str, bool] = field(default_factory=dict)  # section -> present

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "lr": self.lr, "has": self.has}


@dataclass
class DiffReport:
    a: str
    b: str
    kind_a: str
    kind_b: str
    rtol: float
    atol: float
    resume_equivalent_mode: bool = False
    only_a: dict[Section, list[str]] = field(default_factory=dict)
    only_b: dict[Section, list[str]] = field(default_factory=dict)
    renames: list[Rename] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    values_differ: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> reprs
    values_same: int = 0
    state_a: TrainingState = field(default_factory=TrainingState)
    state_b: TrainingState = field(default_factory=TrainingState)
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)  # param -> stats
    rng: dict[str, bool] = field(default_factory=dict)  # rng entry -> equal
    files_a: list[str] = field(default_factory=list)
    files_b: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """Equal within --rtol/--atol (or, in resume-equivalent mode, resume-equivalent)."""
        if self.resume_equivalent_mode:
            return self.resume_equivalent
        return (not any(self.only_a.values()) and not any(self.only_b.values())
                and not self.renames and not self.values_differ
                and all(t.close and t.dtype_a == t.dtype_b and t.shape_a == t.shape_b
                        for t in self.tensors))

    @property
    def resume_equivalent(self) -> bool:
        return not any(f.code == Code.NOT_RESUME_EQUIVALENT.code for f in self.findings) \
            and self._resume_reasons() == []

    def moved(self, section: Section = Section.WEIGHTS) -> list[str]:
        return [t.key for t in self.tensors if t.section is section and not t.equal]

    def unchanged(self, section: Section = Section.WEIGHTS) -> list[str]:
        return [t.key for t in self.tensors if t.section is section and t.equal]

    def _resume_reasons(self) -> list[str]:
        out = []
        for section in Section:
            a, b = self.only_a.get(section, []), self.only_b.get(section, [])
            if a:
                out.append(f"{section.value}: {len(a)} entr{'y' if len(a) == 1 else 'ies'} only "
                           f"in A ({', '.join(a[:3])}{' ...' if len(a) > 3 else ''})")
            if b:
                out.append(f"{section.value}: {len(b)} entr{'y' if len(b) == 1 else 'ies'} only "
                           f"in B ({', '.join(b[:3])}{' ...' if len(b) > 3 else ''})")
        if self.renames:
            out.append("keys renamed: "
                       + "; ".join(f"{r.old!r} -> {r.new!r}" for r in self.renames))
        bad = [t for t in self.tensors if not t.equal]
        if bad:
            out.append(f"{len(bad)} tensor(s) not bit-identical "
                       f"({', '.join(t.key for t in bad[:3])}"
                       f"{' ...' if len(bad) > 3 else ''})")
        if self.values_differ:
            keys = list(self.values_differ)
            out.append(f"{len(keys)} value(s) differ ({', '.join(keys[:3])}"
                       f"{' ...' if len(keys) > 3 else ''})")
        ra, rb = rank_files(self)
        if ra != rb and not self.kind_a == self.kind_b == "deepspeed":
            # (ZeRO: every rank's file is required to read a side, and the state is compared
            # unsharded, so another world size alone is no difference)
            out.append(f"per-rank files differ: {len(ra)} in A, {len(rb)} in B")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "diff", "a": self.a, "b": self.b,
            "kind": [self.kind_a, self.kind_b], "rtol": self.rtol, "atol": self.atol,
            "equal": self.equal, "resume_equivalent": self.resume_equivalent
            if self.resume_equivalent_mode else None,
            "only_a": {s.value: k for s, k in self.only_a.items() if k},
            "only_b": {s.value: k for s, k in self.only_b.items() if k},
            "renames": [r.to_json() for r in self.renames],
            "tensors": [t.to_json() for t in self.tensors],
            "values_differ": {k: list(v) for k, v in self.values_differ.items()},
            "values_same": self.values_same,
            "training_state": {"a": self.state_a.to_json(), "b": self.state_b.to_json()},
            "optimizer_moments": self.moments, "rng": self.rng,
            "files": {"a": self.files_a, "b": self.files_b},
            "findings": [f.to_json() for f in sorted_findings(self.findings)],
        }


def rank_files(rep: DiffReport) -> tuple[list[str], list[str]]:
    """Per-rank files of each side; only comparable between two checkpoints of one kind (a
    conversion to one consolidated file has none, by design)."""
    if rep.kind_a != rep.kind_b:
        return [], []
    return (sorted(f for f in rep.files_a if RANK_FILE.search(f)),
            sorted(f for f in rep.files_b if RANK_FILE.search(f)))



def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.4g}"
