"""Renderers: pure functions from a Report to text. The JSON view is the complete one; the
others (rich text, JUnit, SARIF, GitHub annotations) show the same findings."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console
from rich.text import Text

from . import __version__
from .codes import BY_CODE
from .layouts import summary_keys
from .model import FileInfo, Finding, FormatName, Report, Severity, sorted_findings, tensor_summary

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
CLASS_STYLE = {"dangerous": "bold red", "unknown": "magenta", "data": "yellow",
               "torch-allowed": "green"}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


PICKLE_FORMATS = (FormatName.TORCH_ZIP, FormatName.TORCH_LEGACY, FormatName.PICKLE)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt", ".pickle")


def unreadable_verdict(f: FileInfo) -> dict[str, Any] | None:
    """`weights_only` for a pickle-based file the scan could not read (truncated, empty):
    it does not load, and why. None for files that are not pickles at all."""
    if f.weights_only is not None:
        return None
    if f.format not in PICKLE_FORMATS and not (
            f.format in (FormatName.EMPTY, FormatName.UNKNOWN)
            and f.path.lower().endswith(PICKLE_SUFFIXES)):
        return None
    errors = [x for x in f.findings if x.severity is Severity.ERROR]
    reason = f"{errors[0].code}: {errors[0].message}" if errors else "the pickle cannot be read"
    return {"loads": False, "fixable": False, "allowlist": [], "blockers": [], "reason": reason}


def to_json(report: Report, with_tensors: bool = False, findings: list[Finding] | None = None
            ) -> str:
    doc = report.to_json(with_tensors)
    if findings is not None:
        doc["findings"] = [f.to_json() for f in sorted_findings(findings)]
    for info, entry in zip(report.files, doc.get("files", []), strict=True):
        verdict = unreadable_verdict(info)
        if verdict is not None:
            entry["weights_only"] = verdict
    return json.dumps(doc, indent=2, default=str)


def _console(width: int, color: bool) -> tuple[Console, io.StringIO]:
    """A console writing to a string; piped output gets a wide page so paths stay whole."""
    buf = io.StringIO()
    width = width if color else max(width, 160)
    return Console(file=buf, width=width, force_terminal=color, color_system="auto" if color
                   else None, highlight=False, soft_wrap=False), buf


def _layout_line(report: Report) -> Text:
    lay = report.layout
    t = Text()
    t.append(lay.name, style="bold")
    if lay.step is not None:
        t.append(f"  step {lay.step}")
    for key in summary_keys(lay.name):  # each layout module says which details matter
        if lay.details.get(key) is not None:
            t.append(f"  {key}={lay.details[key]}")
    return t


def inspect_text(report: Report, with_tensors: bool = False, width: int = 110,
                 color: bool = False) -> str:
    from rich.table import Table  # here, not at import: validate's start-up needs no tables

    con, buf = _console(width, color)
    con.print(Text.assemble(("ckptdoctor inspect ", "dim"), report.path))
    con.print(Text.assemble("layout: ", _layout_line(report)))
    for c in report.checkpoints:
        con.print(f"  checkpoint {c.path}: {c.name} step {c.step}")
    files = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    files.add_column("file", no_wrap=True)
    for col in ("format", "size", "tensors", "params", "weights_only"):
        files.add_column(col, no_wrap=True,
                         justify="right" if col in ("size", "tensors", "params") else "left")
    for f in report.files:
        s = tensor_summary(f.tensors)
        files.add_row(f.path, f.format, human_bytes(f.size), str(s["count"] or ""),
                      f"{s['parameters']:,}" if s["parameters"] else "", _verdict(f))
    con.print(files)
    total = tensor_summary([t for f in report.files for t in f.tensors])
    if total["count"]:
        con.print(f"tensors: {total['count']}  parameters: {total['parameters']:,}  "
                  f"bytes: {human_bytes(total['bytes'])}  dtypes: "
                  + ", ".join(f"{k}×{v}" for k, v in total["dtypes"].items()))
    for f in report.files:
        _globals_block(con, f)
    if with_tensors:
        for f in report.files:
            if f.tensors:
                t = Table(title=f.path, box=None, header_style="bold")
                for col in ("tensor", "dtype", "shape", "bytes"):
                    t.add_column(col)
                for ti in f.tensors:
                    t.add_row(ti.name, ti.dtype, str(list(ti.shape)), human_bytes(ti.nbytes))
                con.print(t)
    _findings_block(con, report.all_findings())
    return buf.getvalue()


def _verdict(f: FileInfo) -> Text:
    v = f.weights_only
    if v is None:
        return Text("n/a (no pickle)" if f.format in (FormatName.SAFETENSORS, FormatName.JSON,
                                                       FormatName.TEXT) else "")
    if f.dangerous:
        return Text("REFUSE (dangerous)", style="bold red")
    if v.loads:
        return Text("loads", style="green")
    if not v.fixable:
        return Text("fails (no allow-list helps)", style="red")
    return Text(f"fails; needs {len(v.allowlist)} allow-listed", style="yellow")


def _globals_block(con: Console, f: FileInfo) -> None:
    interesting = [g for g in f.globals if g.klass.value != "torch-allowed"]
    if not interesting:
        return
    con.print(Text.assemble(("globals in ", "dim"), (f.path, "bold")))
    for g in interesting:
        con.print(Text.assemble("  ", (f"{g.klass.value:<13}", CLASS_STYLE[g.klass.value]),
                                g.name, (f"  ({g.opcode})" if g.opcode != "GLOBAL" else "", "dim")))
    if f.weights_only and not f.weights_only.loads and f.weights_only.fixable and not f.dangerous:
        con.print(Text("  allow-list: " + ", ".join(f.weights_only.allowlist), style="yellow"))


def _findings_block(con: Console, findings: list[Finding]) -> None:
    if not findings:
        return
    con.print(Text("findings", style="bold"))
    for f in sorted_findings(findings):
        con.print(Text.assemble(("  " + f"{str(f.severity):<8}", STYLE[f.severity]),
                                (f.code + " ", "bold"), (f.path + ": " if f.path else ""),
                                f.message))
        if f.hint:
            con.print(Text("           fix: " + f.hint, style="dim"))


def findings_text(report: Report, findings: list[Finding], verdict: str, width: int = 110,
                  color: bool = False) -> str:
    con, buf = _console(width, color)
    con.print(Text.assemble(("ckptdoctor validate ", "dim"), report.path, "  ",
                            _layout_line(report)))
    _findings_block(con, findings)
    style = "bold green" if verdict.startswith("OK") else "bold red"
    con.print(Text(verdict, style=style))
    assumed = assumes_line(report)
    if assumed:
        con.print(Text(assumed, style="dim"))
    return buf.getvalue()


def assumes_line(report: Report) -> str:
    """Which consumer versions the verdict assumes, e.g. `assumes: deepspeed 0.15.4 (given),
    torch 2.13.0, ...`: the consumer's framework first, then torch, then the rest."""
    versions = report.extra.get("versions") or {}
    consumer = report.extra.get("consumer") or {}
    given = set(report.extra.get("versions_given") or [])
    if not versions:
        return ""
    first = [n for n in (consumer.get("framework"), "torch") if n in versions]
    order = list(dict.fromkeys(first + sorted(versions)))
    parts = [f"{n} {versions[n] or 'not installed'}" + (" (given)" if n in given else "")
             for n in order]
    return "assumes: " + ", ".join(parts)


def junit(report: Report, findings: list[Finding], fail_on: Severity) -> str:
    from xml.sax.saxutils import escape, quoteattr

    failing = [f for f in findings if f.severity >= fail_on]
    cases = []
    for f in sorted_findings(findings):
        name = quoteattr(f"{f.code} {f.path}")
        body = f"{f.message}\n{f.hint}".strip()
        if f.severity >= fail_on:
            cases.append(f"    <testcase classname=\"ckptdoctor\" name={name}>"
                         f"<failure message={quoteattr(f.message)} type=\"{f.code}\">"
                         f"{escape(body)}</failure></testcase>")
        else:
            cases.append(f"    <testcase classname=\"ckptdoctor\" name={name}>"
                         f"<system-out>{escape(body)}</system-out></testcase>")
    if not cases:
        cases.append(f"    <testcase classname=\"ckptdoctor\" name={quoteattr(report.path)}/>")
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>\n"
            f"  <testsuite name={quoteattr('ckptdoctor validate ' + report.path)} "
            f"tests=\"{len(cases)}\" failures=\"{len(failing)}\">\n" + "\n".join(cases)
            + "\n  </testsuite>\n</testsuites>\n")


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def sarif(report: Report, findings: list[Finding]) -> str:
    rules = sorted({f.code for f in findings})
    doc: dict[str, Any] = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "ckptdoctor", "version": __version__,
                "rules": [{"id": r, "shortDescription": {"text": BY_CODE[r].title}}
                          for r in rules if r in BY_CODE],
            }},
            "results": [{
                "ruleId": f.code, "level": _SARIF_LEVEL[f.severity],
                "message": {"text": f.message + (f" Fix: {f.hint}" if f.hint else "")},
                "locations": [{"physicalLocation": {"artifactLocation": {
                    "uri": _join(report.path, f.path)}}}],
            } for f in sorted_findings(findings)],
        }],
    }
    return json.dumps(doc, indent=2)


def github(report: Report, findings: list[Finding]) -> str:
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = []
    for f in sorted_findings(findings):
        msg = (f.message + (f" Fix: {f.hint}" if f.hint else "")).replace("\n", "%0A")
        lines.append(f"::{level[f.severity]} file={_join(report.path, f.path)},"
                     f"title={f.code}::{msg}")
    return "\n".join(lines) + ("\n" if lines else "")


def _join(root: str, rel: str) -> str:
    if not rel:
        return root
    if root.endswith(rel):
        return root
    return f"{root.rstrip('/')}/{rel}"
