"""A bare torch.distributed.checkpoint directory: `.metadata` + `__<rank>_<n>.distcp`.

`.metadata` is written last by the coordinator (via `.metadata.tmp` and a rename), so its
absence means the save never finished; each storage entry must fit in its shard."""

from __future__ import annotations

from ..model import Finding, LayoutInfo
from .base import DCP_CONSUMER, Consumer, DirView, LayoutBase, check_dcp, dcp_details, is_dcp


class Dcp(LayoutBase):
    name = "dcp"
    framework = "torch"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        return is_dcp(d)

    def describe(self, d: DirView) -> LayoutInfo:
        return LayoutInfo(self.name, d.rel, None, dcp_details(d))

    def checks(self, d: DirView) -> list[Finding]:
        return check_dcp(d)

    def consumer(self, d: DirView, rel: str) -> Consumer:
        return DCP_CONSUMER
