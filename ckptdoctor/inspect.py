"""`inspect`: what a checkpoint is, from metadata only (torch is never imported here)."""

from __future__ import annotations

import os
from pathlib import Path

from .codes import Code
from .layouts import describe_file, detect_layout, find_checkpoints
from .layouts.base import DirView
from .model import LayoutInfo, Report
from .formats import detect_file


def inspect_path(path: str | os.PathLike) -> Report:
    """Identify PATH (a file or a directory) and describe every file in it."""
    return inspect_view(path)[0]


def inspect_view(path: str | os.PathLike) -> tuple[Report, DirView | None]:
    """inspect_path, also returning the directory view (None for a file) so validate reuses
    what was already read."""
    p = Path(path)
    shown = str(path)
    if not os.path.lexists(p):
        return Report(shown, LayoutInfo("none", ""), findings=[Code.PATH_MISSING.finding(
            shown, f"{shown}: no such file or directory")]), None
    if not p.is_dir():
        info = detect_file(p, p.name)
        layout = describe_file(p, info) if info.format != "unknown" or info.size else \
            LayoutInfo("file", "")
        return Report(shown, layout, files=[info]), None
    view = DirView(p)
    report = Report(shown, LayoutInfo("directory", ""))
    if view.truncated:
        report.findings.append(Code.TOO_MANY_FILES.finding("", f"stopped after {len(view.files)} files"))
    if not view.files:
        report.findings.append(Code.EMPTY_DIR.finding("", f"{shown}: directory holds no files"))
        return report, view
    layout = detect_layout(view)
    if layout is not None:
        report.layout = layout.describe(view)
        report.checkpoints = describe_children(view, checkpoint_paths(report.layout))
    else:
        report.checkpoints = describe_children(view, find_checkpoints(view))
        if not report.checkpoints:
            report.findings.append(Code.NO_LAYOUT.finding(
                "", "no known checkpoint layout; files are reported one by one"))
    report.files = [view.info(rel) for rel in view.files]
    return report, view


def describe_children(view: DirView, rels: list[str]) -> list[LayoutInfo]:
    """Describe the checkpoints at `rels` below `view` (paths relative to the view)."""
    out = []
    for rel in rels:
        sub = view.sub(rel)
        child = detect_layout(sub)
        if child is not None:
            info = child.describe(sub)
            info.path = rel
            out.append(info)
    return out


def checkpoint_paths(layout: LayoutInfo) -> list[str]:
    """Relative paths of the checkpoints a run layout lists in its details."""
    entries = layout.details.get("checkpoints", []) if layout.name == "hf-run" else []
    return [e if isinstance(e, str) else e.get("path", "") for e in entries]
