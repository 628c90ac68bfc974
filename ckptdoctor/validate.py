"""`validate`: is this checkpoint complete, intact and loadable by what will resume it?

Static by default (metadata only, no torch). `load=True` really loads each pickle-based file
through the loader chain; `deep=True` reads every byte (zip CRC32s, NaN/Inf, optimizer shapes);
a manifest, when present, is verified on every run."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import leftovers, write_bytes
from .codes import Code, select
from .inspect import inspect_view
from .layouts import detect_layout
from .layouts.base import WEIGHTS_ONLY, Consumer
from .model import FileInfo, Finding, GlobalClass, Report, ScanState, Severity

MANIFEST = ".ckptdoctor-manifest.json"
_PLAIN_TORCH_CODES = (Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code)
Progress = Callable[[str, int], None]  # (label, bytes done since last call)


@dataclass
class ValidateOptions:
    consumer: str = "framework"  # "framework" (the layout's own resume) or "torch"
    allow: tuple[str, ...] = ()
    trust: bool = False
    load: bool = False
    deep: bool = False
    write_manifest: bool = False
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fail_on: Severity = Severity.ERROR


def validate(path: str | os.PathLike, opts: ValidateOptions | None = None,
             progress: Progress | None = None) -> tuple[Report, list[Finding]]:
    """Return the report and the selected findings (the verdict is `exit_code(findings)`)."""
    opts = opts or ValidateOptions()
    report, view = inspect_view(path)
    report.command = "validate"
    root = Path(path)
    consumers: dict[str, Consumer] = {}
    if view is not None and report.files:
        for rel, sub in [("", view)] + [(c.path, view.sub(c.path)) for c in report.checkpoints]:
            layout = detect_layout(sub)
            if layout is None:
                continue
            report.findings.extend(layout.check(sub))
            prefix = f"{rel}/" if rel else ""
            consumers.update({prefix + f: layout.consumer(sub, f) for f in sub.files})
    for f in report.files:
        consumer = WEIGHTS_ONLY if opts.consumer == "torch" else consumers.get(f.path, WEIGHTS_ONLY)
        verdict = consumer_findings(f, consumer, opts.allow) + \
            vouched_findings(f, consumer, opts.allow)
        if verdict:  # the consumer's verdict replaces the plain-torch one for this file
            f.findings = [x for x in f.findings if x.code not in _PLAIN_TORCH_CODES]
        report.findings.extend(verdict)
    for tmp in leftovers(root) if root.exists() else []:
        report.findings.append(Code.LEFTOVER_WRITE.finding(
            _rel(root, tmp), "temporary file from an interrupted ckptdoctor write",
            hint="safe to delete; `ckptdoctor repair` removes it on its next run"))
    if opts.load:
        report.findings.extend(_load_all(root, report, opts))
    if opts.deep:
        report.findings.extend(_deep(root, report, progress))
    report.findings.extend(_manifest(root, report, opts.write_manifest, progress))
    report.extra["consumer"] = opts.consumer
    found = fail_closed(report, select(report.all_findings(), opts.select, opts.ignore))
    report.extra["verdict"] = verdict_text(found, opts.fail_on)
    return report, found


def exit_code(findings: Iterable[Finding], fail_on: Severity = Severity.ERROR) -> int:
    return 1 if any(f.severity >= fail_on for f in findings) else 0


def verdict_text(findings: list[Finding], fail_on: Severity) -> str:
    bad = [f for f in findings if f.severity >= fail_on]
    if not bad:
        return "OK: resumable"
    return f"NOT RESUMABLE: {len(bad)} finding(s) at or above {fail_on}"


def _rel(root: Path, p: Path) -> str:
    base = root if root.is_dir() else root.parent
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return str(p)


def consumer_findings(f: FileInfo, consumer: Consumer, user_allow: Iterable[str] = ()
                      ) -> list[Finding]:
    """Would the consumer load this file? Dangerous globals are reported by the scan itself."""
    v = f.weights_only
    if v is None or f.dangerous or consumer.mode in ("unsafe", "unused", "safetensors"):
        return []
    fatal = getattr(consumer, "fatal", True)
    sev = Severity.ERROR if fatal else Severity.WARNING
    who = consumer.who or "torch.load(weights_only=True)"
    if not v.fixable:
        return [Code.LOAD_FAILS.finding(
            f.path, f"{who} cannot load it: " + "; ".join(v.blockers[:3]), severity=sev,
            hint=f"ckptdoctor repair {f.path} re-saves it in torch's default format",
            consumer=who)]
    missing = [n for n in v.allowlist if n not in consumer.allow and n not in set(user_allow)]
    if not missing:
        return []
    from .diagnose import safe_globals_snippet

    effect = "" if fatal else " (the framework skips it silently: state is not restored)"
    return [Code.LOAD_FAILS.finding(
        f.path, f"{who} fails{effect}: Unsupported global {missing[0]}"
                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; full allow-list: " + ", ".join(v.allowlist),
        severity=sev,
        hint=f"ckptdoctor repair {f.path}   or load with:\n{safe_globals_snippet(v.allowlist)}",
        consumer=who, allowlist=v.allowlist, missing=missing)]


def fail_closed(report: Report, found: list[Finding]) -> list[Finding]:
    """The verdict rule no consumer, --select or --ignore relaxes: a file that is not loadable
    (`FileInfo.loadable`: its scan is not complete, or it names a dangerous global) keeps at
    least one error in the verdict, so it is never resumable and `latest` never picks it."""
    out = list(found)
    failing = {x.path for x in out if x.severity is Severity.ERROR}
    for f in report.files:
        if f.loadable or f.path in failing:
            continue
        own = [x for x in f.findings if x.severity is Severity.ERROR]
        if not own:
            code = Code.SCAN_FAILED if f.scan_state is ScanState.FAILED else Code.SCAN_INCONCLUSIVE
            own = [code.finding(f.path, f"scan {f.scan_state.value}: {code.title}",
                                hint="no consumer may load it; nothing overrides this")]
            f.findings.extend(own)
        out.extend(own)
    return out


def vouched_findings(f: FileInfo, consumer: Consumer, user_allow: Iterable[str] = ()
                     ) -> list[Finding]:
    """A consumer that unpickles with weights_only=False but is judged by the scan
    (`Consumer.vouched_only`, e.g. DeepSpeed): every global it would import must be
    torch-allowed, reviewed data, the consumer's own, or named with --allow."""
    if consumer.mode != "unsafe" or not getattr(consumer, "vouched_only", False):
        return []
    allowed = set(consumer.allow) | set(user_allow)
    unknown = sorted({g.name for g in f.globals if g.klass is GlobalClass.UNKNOWN
                      and g.name not in allowed and (g.match_name or g.name) not in allowed})
    if not unknown:
        return []
    return [Code.LOAD_FAILS.finding(
        f.path, f"{consumer.who} would import and call global(s) nobody vouched for: "
                + ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5
                                            else ""),
        hint="only if you trust where the file came from: "
             + " ".join(f"--allow {n}" for n in unknown[:5]),
        consumer=consumer.who, unknown=unknown)]


def _load_all(root: Path, report: Report, opts: ValidateOptions) -> list[Finding]:
    from .loaders import LoadError, load_with_chain

    base = root if root.is_dir() else root.parent
    out = []
    for f in report.files:
        if f.format not in ("torch-zip", "torch-legacy", "pickle", "safetensors"):
            continue
        if f.findings and any(x.severity is Severity.ERROR for x in f.findings):
            continue  # already known broken (or dangerous: never loaded)
        path = base / f.path if root.is_dir() else root
        try:
            res = load_with_chain(path, allow=opts.allow, trust=opts.trust, static=f, rel=f.path)
        except LoadError as exc:
            out.extend(exc.findings or [Code.LOAD_FAILS.finding(f.path, str(exc))])
            continue
        note = f"loads via {res.strategy}"
        code = Code.LOAD_OK if res.strategy in ("weights_only", "safetensors") else \
            Code.LOAD_NEEDS_ALLOW
        out.append(code.finding(f.path, note))
    return out


def _deep(root: Path, report: Report, progress: Progress | None) -> list[Finding]:
    from .deep import deep_checks

    base = root if root.is_dir() else root.parent
    return deep_checks(base, report, progress)


def _hash(path: Path, progress: Progress | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
            if progress:
                progress(path.name, len(block))
    return h.hexdigest()


def _manifest(root: Path, report: Report, write: bool, progress: Progress | None
              ) -> list[Finding]:
    if not root.is_dir():
        return []
    mpath = root / MANIFEST
    files = [f for f in report.files if f.path != MANIFEST]
    if write:
        doc = {"version": 1, "algorithm": "sha256", "files": {
            f.path: {"size": f.size, "sha256": _hash(root / f.path, progress)} for f in files}}
        write_bytes(mpath, json.dumps(doc, indent=1, sort_keys=True).encode())
        return []
    if not mpath.is_file():
        return []
    try:
        recorded = json.loads(mpath.read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [Code.JSON_INVALID.finding(MANIFEST, "manifest does not parse")]
    out = []
    present = {f.path: f for f in files}
    for rel, want in sorted(recorded.items()):
        f = present.get(rel)
        if f is None:
            out.append(Code.MANIFEST_MISSING_FILE.finding(rel, "listed in the manifest, missing"))
        elif f.size != want.get("size") or _hash(root / rel, progress) != want.get("sha256"):
            out.append(Code.MANIFEST_MISMATCH.finding(
                rel, "content differs from the manifest written when the checkpoint was good",
                hint="restore this file from a backup or use an earlier checkpoint"))
    return out
