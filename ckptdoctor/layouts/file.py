"""A single checkpoint file that no framework layout claims (plain torch.save / safetensors).

Whoever loads it today gets torch's default, `torch.load(weights_only=True)` (torch >= 2.6):
the inherited consumer."""

from __future__ import annotations

from ..model import LayoutInfo
from .base import DirView, LayoutBase
from .lightning import describe_file


class File(LayoutBase):
    name = "file"
    framework = "torch"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        return d.root.is_file()

    def describe(self, d: DirView) -> LayoutInfo:
        return describe_file(d.root, d.info(""))
