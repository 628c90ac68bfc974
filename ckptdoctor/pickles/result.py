"""What a scan of one pickle stream returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import Finding, GlobalClass, GlobalRef, ScanState, TensorInfo, WeightsOnlyVerdict


@dataclass
class StorageRef:
    key: str
    dtype: str
    itemsize: int
    location: str
    numel: int | None

    @property
    def nbytes(self) -> int | None:
        return None if self.numel is None else self.numel * self.itemsize


@dataclass
class PickleScan:
    """What one pickle stream holds, statically."""

    protocol: int | None = None
    opcodes: int = 0
    end_offset: int = 0  # offset just past STOP (or where scanning stopped)
    complete: bool = False  # reached STOP
    globals: list[GlobalRef] = field(default_factory=list)
    storages: list[StorageRef] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    verdict: WeightsOnlyVerdict = field(default_factory=lambda: WeightsOnlyVerdict(True))
    findings: list[Finding] = field(default_factory=list)
    root: Any = None  # symbolic root value (for layout modules that read keys like global_step)
    limit_hit: bool = False  # a ScanLimits / FileBudget cap stopped the scan

    @property
    def state(self) -> ScanState:
        """COMPLETE only when the stream was walked to its STOP with no cap hit."""
        return ScanState.COMPLETE if self.complete and not self.limit_hit \
            else ScanState.INCONCLUSIVE

    @property
    def dangerous(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.klass is GlobalClass.DANGEROUS]
