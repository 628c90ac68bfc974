"""The findings data model. Everything a command learns is one of these; renderers are pure
functions over them (see render.py), so JSON never loses what the human view shows."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2

    def __str__(self) -> str:  # "error", not "Severity.ERROR"
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls[text.upper()]


class GlobalClass(str, enum.Enum):
    """How dangerous a pickled global is."""

    TORCH_ALLOWED = "torch-allowed"  # in torch's default weights_only allow-list
    DATA = "data"  # known plain data (numpy arrays, enums, Namespace, ...): safe to allow-list
    DANGEROUS = "dangerous"  # can execute code or touch the system
    UNKNOWN = "unknown"  # anything else: importing it runs that module's code


class FormatName(str, enum.Enum):
    """What a file is (`FileInfo.format`). A str, so JSON and text output show the value."""

    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    PICKLE = "pickle"
    SAFETENSORS = "safetensors"
    NUMPY = "numpy"
    DCP_METADATA = "dcp-metadata"
    DCP_SHARD = "dcp-shard"
    ZIP = "zip"  # a zip that is not a torch checkpoint
    JSON = "json"
    TEXT = "text"
    EMPTY = "empty"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class ScanState(str, enum.Enum):
    """How far the static scan of a file got. Anything but COMPLETE is not loadable: the gate,
    repair, convert and every loader strategy refuse it (fail closed)."""

    COMPLETE = "complete"  # every byte the consumer will read was scanned
    INCONCLUSIVE = "inconclusive"  # a cap was hit, readers disagree, or a record was unreadable
    FAILED = "failed"  # the scan itself could not run (unreadable file, internal error)


@dataclass(frozen=True)
class Finding:
    """One thing a check found. `code` is stable (see codes.py); `message` is for people."""

    code: str
    severity: Severity
    path: str  # file or directory the finding is about, relative to the inspected PATH
    message: str
    hint: str = ""  # what to do about it, ready to paste where possible
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": str(self.severity),
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class GlobalRef:
    """A global a pickle references. `name` is the file's own spelling (module.qualname);
    `match_name` is what torch's unpickler compares (after its Python-2 name mapping)."""

    name: str
    klass: GlobalClass
    opcode: str  # GLOBAL, STACK_GLOBAL, INST, OBJ, BUILD (a type that only surfaces at BUILD)
    match_name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "class": self.klass.value, "opcode": self.opcode}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor found from metadata only (safetensors header or a pickle's rebuild call)."""

    name: str
    dtype: str  # torch spelling without "torch.", e.g. "bfloat16"
    shape: tuple[int, ...]
    nbytes: int
    storage: str | None = None  # storage record key (torch) or None (safetensors)
    offset: int | None = None  # element offset into the storage / byte offset in safetensors

    @property
    def numel(self) -> int:
        n = math.prod(self.shape)
        return n

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "nbytes": self.nbytes}


@dataclass
class WeightsOnlyVerdict:
    """Would `torch.load(weights_only=True)` load this file, and what would make it?"""

    loads: bool
    allowlist: list[str] = field(default_factory=list)  # complete and minimal, file spelling
    fixable: bool = True  # False when no allow-list helps (bad opcode, blocked module, ...)
    blockers: list[str] = field(default_factory=list)  # why no allow-list helps

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loads": self.loads, "allowlist": self.allowlist}
        if not self.fixable:
            out["fixable"] = False
            out["blockers"] = self.blockers
        return out


@dataclass
class FileInfo:
    """What one file is, from metadata only."""

    path: str  # relative to the inspected PATH ("" when PATH is the file)
    format: FormatName
    size: int
    globals: list[GlobalRef] = field(default_factory=list)
    weights_only: WeightsOnlyVerdict | None = None  # None: not a pickle-based file
    tensors: list[TensorInfo] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # format-specific facts (protocol, ...)
    scan_state: ScanState = ScanState.COMPLETE  # set by the format readers and the scanner

    @property
    def loadable(self) -> bool:
        """The one rule: only a completely scanned file with no dangerous global may be loaded."""
        return self.scan_state is ScanState.COMPLETE and not self.dangerous

    @property
    def dangerous(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.klass is GlobalClass.DANGEROUS]

    def to_json(self, with_tensors: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "size": self.size,
            "globals": [g.to_json() for g in self.globals],
            "weights_only": self.weights_only.to_json() if self.weights_only else None,
            "tensor_summary": tensor_summary(self.tensors),
            "meta": self.meta,
            "scan_state": self.scan_state.value,
        }
        if with_tensors:
            out["tensors"] = [t.to_json() for t in self.tensors]
        return out


def tensor_summary(tensors: list[TensorInfo]) -> dict[str, Any]:
    dtypes: dict[str, int] = {}
    for t in tensors:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    return {
        "count": len(tensors),
        "parameters": sum(t.numel for t in tensors),
        "bytes": sum(t.nbytes for t in tensors),
        "dtypes": dict(sorted(dtypes.items())),
    }


@dataclass
class LayoutInfo:
    """Which framework wrote a checkpoint, and what it recorded about itself."""

    name: str  # see layouts/__init__.py
    path: str  # relative to the inspected PATH ("" for PATH itself)
    step: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # epoch, lr, world_size, zero_stage...

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "step": self.step, **self.details}


@dataclass
class Report:
    """The result of inspect or validate on one PATH."""

    path: str
    layout: LayoutInfo
    files: list[FileInfo] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checkpoints: list[LayoutInfo] = field(default_factory=list)  # nested checkpoints (runs, walks)
    command: str = "inspect"
    extra: dict[str, Any] = field(default_factory=dict)

    def all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for f in self.files:
            out.extend(f.findings)
        return out

    def worst(self) -> Severity | None:
        found = self.all_findings()
        return max((f.severity for f in found), default=None)

    def to_json(self, with_tensors: bool = False) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "path": self.path,
            "layout": self.layout.to_json(),
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "files": [f.to_json(with_tensors) for f in self.files],
            "findings": [f.to_json() for f in sorted_findings(self.all_findings())],
            **self.extra,
        }


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-int(f.severity), f.path, f.code, f.message))


__all__ = [
    "SCHEMA_VERSION", "Severity", "GlobalClass", "ScanState", "Finding", "GlobalRef", "TensorInfo",
    "WeightsOnlyVerdict", "FileInfo", "LayoutInfo", "Report", "tensor_summary", "asdict",
]
