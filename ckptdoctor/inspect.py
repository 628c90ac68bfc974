"""`inspect`: what a checkpoint is, from metadata only (torch is never imported here)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex

from .codes import Code
from .formats import detect_file
from .layouts import checkpoint_paths, describe_file, detect_layout, find_checkpoints
from .layouts.base import DirView
from .layouts.versions import Env
from .model import Finding, FormatName, LayoutInfo, Report
from .storage import RemotePath, RemoteReadError, as_path, io_stats, is_remote, is_url


def inspect_path(path: str | os.PathLike | RemotePath) -> Report:
    """Identify PATH (a file or a directory) and describe every file in it."""
    p = as_path(path)
    report = inspect_view(p)[0]
    runnable_hints(report)
    add_io_stats(report, p)
    return report


def add_io_stats(report: Report, path: object) -> None:
    """A remote run reports what it cost: `bytes_read` and `requests` (JSON top level)."""
    stats = io_stats(path)
    if stats is not None:
        report.extra.update(stats)


_REPAIR = re.compile(r"ckptdoctor repair (\S+)")
_LOAD = re.compile(r"torch\.load\(('[^']*'|\"[^\"]*\")")


def shell_path(report: Report, rel: str) -> str:
    """`rel` (relative to the inspected PATH) as a path from the working directory."""
    root = report.path
    if is_url(root):  # a remote report: a file's findings name the file itself
        if not rel or rel == "." or not report.files or report.layout.name in ("file", "none") \
                or root.rstrip("/").endswith("/" + rel):
            return root
        return root.rstrip("/") + "/" + rel
    if not rel or rel == "." or not os.path.isdir(root):
        return root
    return os.path.join(root, rel)


def runnable_hints(report: Report) -> None:
    """Make every `ckptdoctor repair X` and `torch.load('X')` in a hint name the file from
    the working directory, shell-quoted, so the hint runs as pasted. Findings name files
    relative to the inspected PATH; hints are built where the file is known, so they are
    rewritten here, once, where PATH is known."""
    def fix(f: Finding) -> Finding:
        if not f.hint:
            return f
        full = shell_path(report, f.path)
        rel_forms = {f.path, shlex.quote(f.path), ".", "''"} if f.path else {".", "''"}

        def repl_repair(m: re.Match) -> str:
            return f"ckptdoctor repair {shlex.quote(full)}" if m.group(1) in rel_forms \
                else m.group(0)

        def repl_load(m: re.Match) -> str:
            return f"torch.load({full!r}" if m.group(1)[1:-1] in rel_forms else m.group(0)

        hint = _LOAD.sub(repl_load, _REPAIR.sub(repl_repair, f.hint))
        return f if hint == f.hint else dataclasses.replace(f, hint=hint)

    report.findings = [fix(f) for f in report.findings]
    for info in report.files:
        info.findings = [fix(f) for f in info.findings]


def inspect_view(path: str | os.PathLike | RemotePath, env: Env | None = None
                 ) -> tuple[Report, DirView | None]:
    """inspect_path, also returning the directory view (None for a file) so validate reuses
    what was already read. `env`: the consumer versions layouts judge by (default: installed)."""
    p = as_path(path)
    shown = str(p) if is_remote(p) else str(path)
    if is_remote(p):
        try:
            p.session.info(p.path)
        except RemoteReadError as exc:  # timeout, credentials, network: its own code
            return Report(shown, LayoutInfo("none", ""), findings=[exc.code.finding(
                shown, f"{shown}: {exc.strerror}")]), None
    if not (p.exists() if is_remote(p) else os.path.lexists(p)):
        return Report(shown, LayoutInfo("none", ""), findings=[Code.PATH_MISSING.finding(
            shown, f"{shown}: no such file or directory")]), None
    if not p.is_dir():
        info = detect_file(p, p.name)
        described = describe_file(p, info) if info.format != FormatName.UNKNOWN or info.size else \
            LayoutInfo("file", "")
        return Report(shown, described, files=[info]), None
    view = DirView(p, env=env)
    report = Report(shown, LayoutInfo("directory", ""))
    if view.truncated:
        report.findings.append(Code.TOO_MANY_FILES.finding("", f"stopped after {len(view.files)} "
                                                               "files"))
    if not view.files:
        report.findings.append(Code.EMPTY_DIR.finding("", f"{shown}: directory holds no files"))
        return report, view
    layout = detect_layout(view)
    if layout is not None:
        report.layout = layout.describe(view)
        report.checkpoints = describe_children(view, checkpoint_paths(layout, view))
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
