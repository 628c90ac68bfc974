"""`validate`: is this checkpoint complete, intact and loadable by what will resume it?

Static by default (metadata only, no torch). `load=True` really loads each pickle-based file
through the loader chain; `deep=True` reads every byte (zip CRC32s, NaN/Inf, optimizer shapes);
a manifest, when present, is verified on every run."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import leftovers
from .codes import Code, select
from .inspect import add_io_stats, inspect_view, runnable_hints
from .layouts import detect_layout
from .layouts.base import WEIGHTS_ONLY, Consumer
from .layouts.versions import Env
from .manifest import MANIFEST  # re-exported: repair reads it from here
from .model import FileInfo, Finding, FormatName, GlobalClass, Report, ScanState, Severity
from .storage import AnyPath, RemotePath, as_path, is_remote

if TYPE_CHECKING:
    from .dist import Group  # imports deep.py; validate needs it only under torchrun

_PLAIN_TORCH_CODES = (Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code)
Progress = Callable[[str, int], None]  # (label, bytes done since last call)
_FILE_FRAMEWORK = {"lightning": "lightning"}


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
    # NAME -> VERSION (--framework-version): judge for that environment instead of this one
    versions: dict[str, str] = field(default_factory=dict)
    jobs: int = 0  # threads for the --deep / manifest pass; 0: one per CPU
    allow_nonfinite: bool = False  # NaN/Inf in parameters/optimizer state: warning, not error
    dist: Group | None = None  # under torchrun: files are split across its ranks


def validate(path: str | os.PathLike | RemotePath, opts: ValidateOptions | None = None,
             progress: Progress | None = None) -> tuple[Report, list[Finding]]:
    """Return the report and the selected findings (the verdict is `exit_code(findings)`)."""
    opts = opts or ValidateOptions()
    env = Env.detect(opts.versions)
    root = as_path(path)
    report, view = inspect_view(root if is_remote(root) else path, env)
    report.command = "validate"
    consumers: dict[str, Consumer] = {}
    framework = "torch"
    if view is not None and report.files:
        for rel, sub in [("", view)] + [(c.path, view.sub(c.path)) for c in report.checkpoints]:
            layout = detect_layout(sub)
            if layout is None:
                continue
            if not rel or framework == "torch":
                framework = layout.framework
            checked = layout.check(sub)
            report.findings.extend(checked)
            prefix = f"{rel}/" if rel else ""
            consumers.update({prefix + f: layout.consumer(sub, f) for f in sub.files})
            consumers.update(absent_consumers(layout, sub, prefix, checked, consumers))
    elif view is None and report.files:  # a single file: the layout describe_file found
        framework = _FILE_FRAMEWORK.get(report.layout.name, "torch")
        if framework == "lightning":
            from .layouts.lightning import load_consumer

            consumers[report.files[0].path] = load_consumer(env)
    for f in report.files:
        consumer = WEIGHTS_ONLY if opts.consumer == "torch" else consumers.get(f.path, WEIGHTS_ONLY)
        if consumer.mode == "unused":
            f.findings = unread_findings(f.findings, consumer)
        verdict = consumer_findings(f, consumer, opts.allow) + \
            vouched_findings(f, consumer, opts.allow)
        if verdict:  # the consumer's verdict replaces the plain-torch one for this file
            f.findings = [x for x in f.findings if x.code not in _PLAIN_TORCH_CODES]
        report.findings.extend(verdict)
    report.findings.extend(torch_cve_findings(report, consumers, opts))
    if not is_remote(root) and root.exists():
        for tmp in leftovers(root):
            report.findings.append(Code.LEFTOVER_WRITE.finding(
                _rel(root, tmp), "temporary file from an interrupted ckptdoctor write",
                hint="safe to delete; `ckptdoctor repair` removes it on its next run"))
    if opts.load:
        # loading reads local files: the CLI refuses --load for a URL (CK015) before this
        assert not is_remote(root), "--load needs a local copy"
        report.findings.extend(_load_all(root, report, opts,
                                         consumers if opts.consumer != "torch" else {}))
    report.findings.extend(_single_pass(root, report, opts, progress))
    if opts.consumer != "torch":  # --load / --deep / manifest findings on unread files
        report.findings = _unread_report(report.findings, consumers)
    if opts.consumer == "torch":
        framework = "torch"
    runnable_hints(report)
    found = fail_closed(report, select(report.all_findings(), opts.select, opts.ignore),
                        consumers if opts.consumer != "torch" else {})
    report.extra["verdict"] = verdict_text(found, opts.fail_on)
    report.extra["resumable"] = exit_code(found, opts.fail_on) == 0
    report.extra["consumer"] = {"framework": framework, "version": env.version(framework),
                                "mode": opts.consumer}
    report.extra["versions"] = env.to_json()
    report.extra["versions_given"] = sorted(env.given)
    add_io_stats(report, root)
    return report, found


def torch_cve_findings(report: Report, consumers: dict[str, Consumer], opts: ValidateOptions
                       ) -> list[Finding]:
    """CK110 for each known weights_only hole of the installed torch (read from package
    metadata), when any file here is judged by a torch.load(weights_only=True) consumer."""
    from .pickles.policy import weights_only_caveats

    judged = [f for f in report.files if f.weights_only is not None and (
        opts.consumer == "torch" or consumers.get(f.path, WEIGHTS_ONLY).mode == "weights_only")]
    if not judged:
        return []
    return [Code.TORCH_WEIGHTS_ONLY_CVE.finding(
        "", f"every weights_only verdict here assumes a sound unpickler, but {sentence}",
        hint="upgrade torch before resuming from files you did not write", cve=cve)
        for cve, sentence in weights_only_caveats()]


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
    """Would the consumer load this file? Dangerous globals are reported by the scan itself.
    A failure the resume survives (the file is never read, or the framework catches the load
    error) is CK421, a warning; one that stops the resume is CK601, an error."""
    v = f.weights_only
    if v is None or f.dangerous or consumer.mode in ("unsafe", "unused", "safetensors"):
        return []
    fatal = getattr(consumer, "fatal", True)
    code = Code.LOAD_FAILS if fatal else Code.LOAD_NOT_NEEDED
    who = consumer.who or "torch.load(weights_only=True)"
    where = shlex.quote(f.path)  # relative to PATH; runnable_hints makes it cwd-relative
    if not v.fixable:
        return [code.finding(
            f.path, f"{who} cannot load it: " + "; ".join(v.blockers[:3]),
            hint=f"ckptdoctor repair {where} re-saves it in torch's default format",
            consumer=who)]
    missing = [n for n in v.allowlist if n not in consumer.allow and n not in set(user_allow)]
    if not missing:
        return []
    from .diagnose import safe_globals_snippet

    effect = "" if fatal else " (the framework skips it silently: state is not restored)"
    return [code.finding(
        f.path, f"{who} fails{effect}: Unsupported global {missing[0]}"
                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; full allow-list: " + ", ".join(v.allowlist),
        hint=f"ckptdoctor repair {where}   or load with:\n{safe_globals_snippet(v.allowlist)}",
        consumer=who, allowlist=v.allowlist, missing=missing)]


_KEEP_ERRORS = (Code.DANGEROUS_GLOBAL.code, Code.DYNAMIC_GLOBAL.code)  # never downgraded


def _unread_report(findings: list[Finding], consumers: dict[str, Consumer]) -> list[Finding]:
    out = []
    for f in findings:
        c = consumers.get(f.path)
        out += unread_findings([f], c) if c is not None and c.mode == "unused" else [f]
    return out


def absent_consumers(layout, sub, prefix: str, findings: list[Finding],
                     known: dict[str, Consumer]) -> dict[str, Consumer]:
    """The consumer of each file a layout check names but that does not exist (a missing
    file): the layout decides whether its resume would read it (CK420 when it would not)."""
    out = {}
    for x in findings:
        if x.path and x.path not in known and x.path.startswith(prefix):
            out[x.path] = layout.consumer(sub, x.path[len(prefix):])
    return out


def unread_findings(findings: list[Finding], consumer: Consumer) -> list[Finding]:
    """The findings of a file the resume never reads: what would be an error (truncated, empty,
    unloadable) cannot stop the resume, so it is one CK421 warning naming the original code.
    Code-executing globals stay errors: ckptdoctor refuses such a file wherever it is."""
    out = []
    for x in findings:
        if x.code == Code.MISSING_FILE.code:
            x = Code.UNREAD_MISSING.finding(
                x.path, f"{x.message} (not read on resume: {consumer.who})", x.hint,
                **{**x.detail, "was": x.code})
        elif x.severity is Severity.ERROR and x.code not in _KEEP_ERRORS:
            x = Code.LOAD_NOT_NEEDED.finding(
                x.path, f"{x.message} ({x.code}; not read on resume: {consumer.who})", x.hint,
                **{**x.detail, "was": x.code})
        out.append(x)
    return out


# Why a scan did not complete that point at a crafted file, not at damage: these fail the
# verdict even in a file the resume never reads (a truncated training_args.bin is a warning,
# a training_args.bin whose zip readers disagree is not).
HOSTILE_SIGNALS = frozenset(c.code for c in (
    Code.DANGEROUS_GLOBAL, Code.PICKLE_LIMIT, Code.DYNAMIC_GLOBAL, Code.POLYGLOT,
    Code.CVE_PATTERN, Code.STORAGE_NUMEL, Code.ZIP_READERS_DIFFER, Code.ZIP_ENTRY_FLAGS,
    Code.DCP_PATH, Code.SCAN_FAILED))


def _hostile(f: FileInfo) -> bool:
    return bool(f.dangerous) or any(
        x.code in HOSTILE_SIGNALS or x.detail.get("was") in HOSTILE_SIGNALS for x in f.findings)


def fail_closed(report: Report, found: list[Finding],
                consumers: dict[str, Consumer] | None = None) -> list[Finding]:
    """The verdict rule no consumer, --select or --ignore relaxes: a file that is not loadable
    (`FileInfo.loadable`: its scan is not complete, or it names a dangerous global) keeps at
    least one error in the verdict, so it is never resumable and `latest` never picks it. The
    one exception is damage (not a hostile signal) in a file the resume never reads: that
    stays the CK421 warning the layout gave it (issue 10: severity is the effect on resume)."""
    out = list(found)
    failing = {x.path for x in out if x.severity is Severity.ERROR}
    consumers = consumers or {}
    for f in report.files:
        if f.loadable or f.path in failing:
            continue
        unread = consumers.get(f.path) is not None and consumers[f.path].mode == "unused"
        if unread and not _hostile(f):
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
    """A consumer that unpickles with weights_only=False (DeepSpeed, accelerate's custom
    state, Lightning and the Trainer on some versions, DCP's bytes items) is judged by the
    scan: every global it would import must be torch-allowed, reviewed data, the consumer's
    own, or named with --allow (issue 9: nothing is resolved that nobody vouched for)."""
    if consumer.mode != "unsafe":
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


def _load_all(root: Path, report: Report, opts: ValidateOptions,
              consumers: dict[str, Consumer] | None = None) -> list[Finding]:
    """Really load each pickle-based file. A file the consumer never reads on resume (HF
    training_args.bin) or whose load error it catches (accelerate's RNG) cannot stop the
    resume: its failure is at most a warning (CK421), whatever the loader says."""
    from .loaders import LoadError, load_with_chain

    base = root if root.is_dir() else root.parent
    out = []
    for f in report.files:
        if f.format not in (FormatName.TORCH_ZIP, FormatName.TORCH_LEGACY, FormatName.PICKLE,
                            FormatName.SAFETENSORS):
            continue
        if f.findings and any(x.severity is Severity.ERROR for x in f.findings):
            continue  # already known broken (or dangerous: never loaded)
        path = base / f.path if root.is_dir() else root
        try:
            res = load_with_chain(path, allow=opts.allow, trust=opts.trust, static=f, rel=f.path)
        except LoadError as exc:
            found = exc.findings or [Code.LOAD_FAILS.finding(f.path, str(exc))]
            c = (consumers or {}).get(f.path)
            if c is not None and (c.mode == "unused" or not c.fatal):
                why = ("the resume never reads it" if c.mode == "unused" else
                       "the framework catches this failure and resumes without its state")
                found = [Code.LOAD_NOT_NEEDED.finding(
                    x.path, f"{x.message} ({c.who or why}; {why})", x.hint,
                    **{**x.detail, "was": x.code}) if x.severity is Severity.ERROR else x
                    for x in found]
            out.extend(found)
            continue
        note = f"loads via {res.strategy}"
        code = Code.LOAD_OK if res.strategy in ("weights_only", "safetensors") else \
            Code.LOAD_NEEDS_ALLOW
        out.append(code.finding(f.path, note))
    return out


def _single_pass(root: AnyPath, report: Report, opts: ValidateOptions,
                 progress: Progress | None) -> list[Finding]:
    """--deep and the manifest share one read of every byte (see deep.py and stream.py)."""
    from . import manifest

    files = [f for f in report.files if f.path != MANIFEST]
    mpath = root / MANIFEST
    recorded: dict[str, manifest.Entry] | None = None
    out: list[Finding] = []
    if root.is_dir() and not opts.write_manifest and mpath.is_file():
        try:
            recorded = manifest.read(mpath)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.append(Code.JSON_INVALID.finding(MANIFEST, f"manifest does not parse: {exc}"))
    if opts.write_manifest and root.is_dir():
        hash_rels = {f.path for f in files}
    elif recorded is not None:
        hash_rels = {f.path for f in files if f.path in recorded and
                     recorded[f.path].size in (None, f.size)}
    else:
        hash_rels = set()
    if is_remote(root) and not opts.deep:
        hash_rels = set()  # verifying a manifest reads every byte: remote, only with --deep
    if not opts.deep and not hash_rels:
        return out
    from .deep import default_jobs, optimizer_checks, stream_files

    jobs = opts.jobs or default_jobs()
    group = opts.dist
    mine = group.assign(files) if group is not None else files
    outcomes = stream_files(root, mine, deep=opts.deep, hash_rels=hash_rels, jobs=jobs,
                            progress=progress, allow_nonfinite=opts.allow_nonfinite)
    if group is not None:
        outcomes = group.gather(outcomes)
    for o in sorted(outcomes, key=lambda o: o.rel):
        out.extend(o.findings)
    if opts.deep:
        out.extend(optimizer_checks(root, report))
    hashes = {o.rel: o.sha256 for o in outcomes if o.sha256}
    if opts.write_manifest and root.is_dir():
        # the manifest is written locally: the CLI refuses --write-manifest for a URL (CK015)
        assert not is_remote(root), "--write-manifest needs a local copy"
        if group is None or group.rank == 0:
            manifest.write(root, {rel: hashes[rel] for rel in sorted(hash_rels) if rel in hashes})
    elif recorded is not None:
        present = {f.path for f in files}
        for rel, want in sorted(recorded.items()):
            if rel not in present:
                out.append(Code.MANIFEST_MISSING_FILE.finding(rel,
                                                              "listed in the manifest, missing"))
            elif hashes.get(rel) != want.sha256:
                out.append(Code.MANIFEST_MISMATCH.finding(
                    rel, "content differs from the manifest written when the checkpoint was good",
                    hint="restore this file from a backup or use an earlier checkpoint"))
    return out
