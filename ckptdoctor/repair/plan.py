"""Repair's selection and planning: which files need a rewrite (or an allow-list, or a
safetensors copy), each one transcoded and converted by the rules in memory, nothing written.
`prepare_repair` returns the plan the user confirms; repair/engine.py applies exactly it.
`convert_file` is the same transcode + rules step for one file, as a library call."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import TMP_MARKER, leftovers
from ..codes import Code
from ..layouts import file_flavour
from ..model import FileInfo, Finding, FormatName, ScanState, Severity
from . import allowlist as al
from .backup import (
    BACKUP_DIRNAME,
    checkpoint_root,
    default_backup_root,
    in_backup_tree,
    sessions,
    sha256_file,
)
from .model import (
    ALLOWLIST,
    NOTHING,
    REFUSED,
    REWRITE,
    SAFETENSORS,
    Change,
    FilePlan,
    RepairPlan,
    RepairTarget,
)
from .rules import covered_names
from .transcode import Transcoded, TranscodeRefused, offending_names, transcoding_load
from .verify import verify_safetensors_file
from .walk import Converter, leftover_captures

CONSUMERS = ("framework", "torch")
# Rules whose output the diff compares as the same plain data as the original (numpy scalar ==
# its Python value, numpy RNG state == its list form): a difference there is never intended.
DIFF_SEES_THROUGH = frozenset({"numpy-rng-state", "numpy-scalar"})
# Scan findings that mean nothing vouches for the whole pickle: such a file is never loaded.
_SCAN_INCOMPLETE = frozenset({Code.PICKLE_MALFORMED.code, Code.PICKLE_LIMIT.code,
                              Code.DYNAMIC_GLOBAL.code})
TARGETS = tuple(RepairTarget)
REWRITABLE = (FormatName.TORCH_ZIP, FormatName.TORCH_LEGACY)


# --- selection -----------------------------------------------------------------------------------
@dataclass
class _Candidate:
    rel: str
    reason: str
    info: FileInfo
    for_safetensors: bool = False  # picked only because --to safetensors


_root_of = checkpoint_root  # one rule for where repair writes backups and undo reads them


def _select(p: Path, consumer: str, to: str, backup_root: Path
            ) -> tuple[list[_Candidate], list[Finding]]:
    from ..validate import ValidateOptions, validate

    root = _root_of(p)
    try:  # a --backup-dir inside the checkpoint holds originals: never "repair" those
        inside = Path(os.path.realpath(backup_root)).relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        inside = None

    report, _ = validate(p, ValidateOptions(consumer=consumer))
    reasons: dict[str, str] = {}
    broken: dict[str, str] = {}  # other errors about a file: repair cannot rewrite those
    for f in report.all_findings():
        # CK421 without `was`: a load failure the framework survives (accelerate's RNG), still
        # worth rewriting; with `was` it is damage in a file the resume never reads
        if (f.code == Code.LOAD_FAILS.code or (f.code == Code.LOAD_NOT_NEEDED.code
                                               and "was" not in f.detail)) \
                and f.path not in reasons:
            reasons[f.path] = f.message
        elif f.severity is Severity.ERROR and f.path not in broken:
            broken[f.path] = f"{f.code} {f.message}"
    out: list[_Candidate] = []
    for info in report.files:
        name = info.path.rsplit("/", 1)[-1]
        if BACKUP_DIRNAME in info.path.split("/"):
            continue  # originals kept by an earlier repair: never repaired or backed up again
        if name.startswith(TMP_MARKER) or (inside is not None and p.is_dir() and (
                info.path == inside or info.path.startswith(inside.rstrip("/") + "/"))):
            continue
        if info.dangerous and info.format in REWRITABLE + (FormatName.PICKLE,):
            out.append(_Candidate(info.path, "references code-executing global(s): " + ", ".join(
                sorted({g.name for g in info.dangerous})), info))
        elif info.scan_state is not ScanState.COMPLETE:  # fail closed: refused in _prepare
            out.append(_Candidate(info.path, f"the static scan is {info.scan_state.value}", info))
        elif info.path in reasons:
            out.append(_Candidate(info.path, reasons[info.path], info))
        elif info.path in broken:
            out.append(_Candidate(info.path, broken[info.path], info))
        elif (to == RepairTarget.SAFETENSORS and info.format in REWRITABLE and info.tensors
              and info.weights_only is not None and info.weights_only.loads):
            out.append(_Candidate(info.path, "--to safetensors: torch pickle holding tensors",
                                  info, for_safetensors=True))
    return out, []


def safetensors_name(rel: str) -> str:
    """pytorch_model.bin -> model.safetensors (what transformers looks for), else the stem."""
    head, _, base = rel.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base else base
    m = re.fullmatch(r"pytorch_model(-\d+-of-\d+)?", stem)
    if m:
        stem = "model" + (m.group(1) or "")
    return (head + "/" if head else "") + stem + ".safetensors"


def _pure_tensors(obj: Any) -> bool:
    import torch

    return (type(obj) in (dict,) or isinstance(obj, dict)) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
        and not v.is_quantized and not v.is_meta for k, v in obj.items())


# --- planning one file ----------------------------------------------------------------------------
@dataclass
class PreparedFile:
    plan: FilePlan
    converted: Any = None
    conv: Converter | None = None
    stat: os.stat_result | None = None
    finish_from: Path | None = None  # backup of an interrupted --to safetensors conversion


def _interrupted_conversion(root: Path, backup_root: Path, fp: FilePlan, converted: dict
                            ) -> Path | None:
    """The backup copy of `fp.rel` when an earlier run converted it to `fp.target`, backed it
    up and was stopped before removing it; None unless the target holds the same tensors."""
    target = root / fp.target
    if not target.is_file():
        return None
    digest = None
    for s in reversed(sessions(backup_root)):
        for e in s.doc["files"]:
            if e["rel"] != fp.rel or not any(c.get("rel") == fp.target and c.get("for") == fp.rel
                                             for c in s.doc.get("created", [])):
                continue
            digest = digest or sha256_file(fp.path)
            copy = s.dir / fp.rel
            if e["sha256"] == digest and copy.is_file() and sha256_file(copy) == digest:
                try:
                    verify_safetensors_file(target, converted)
                except Exception:  # not the conversion we would write
                    return None
                return copy
    return None


def _refuse(fp: FilePlan, reason: str, hint: str = "") -> FilePlan:
    fp.action = REFUSED
    fp.reason = reason
    fp.hint = hint
    fp.findings.append(Code.REPAIR_REFUSED.finding(fp.rel, f"repair refused: {reason}",
                                                   hint=hint))
    return fp


def _prepare(root: Path, cand: _Candidate, allow: tuple[str, ...], to: str,
             recorded: dict[str, Any], backup_root: Path) -> PreparedFile:
    rel = cand.rel
    path = root / rel
    fp = FilePlan(rel, path, NOTHING, selected_because=cand.reason, target=rel)
    prep = PreparedFile(fp)
    info = cand.info
    if info.dangerous:
        _refuse(fp, cand.reason + "; loading it can run code, so it is not rewritten",
                "do not load this file; restore it from a trusted source")
        fp.globals = sorted({g.name for g in info.dangerous})
        fp.hostile = True
        return prep
    real = Path(os.path.realpath(path))
    try:
        real_rel = real.relative_to(Path(os.path.realpath(root))).as_posix()
    except ValueError:
        _refuse(fp, "symlink to a file outside the checkpoint", f"repair {real} directly")
        return prep
    if real_rel != rel:
        fp.reason = f"symlink to {real_rel}"
        return prep  # the target is planned on its own
    incomplete = [f.message for f in info.findings if f.code in _SCAN_INCOMPLETE]
    if info.scan_state is not ScanState.COMPLETE and not incomplete:
        incomplete = [f"the scan is {info.scan_state.value}"]
    if incomplete:
        _refuse(fp, "the static scan cannot vouch for the whole pickle (" + incomplete[0][:200]
                + "); it is not loaded", "do not load this file; restore it from a trusted source")
        fp.hostile = True
        return prep
    if info.format not in REWRITABLE:
        _refuse(fp, f"{cand.reason}; ckptdoctor only rewrites files torch.save wrote, and "
                    f"this one is {info.format}")
        return prep
    prep.stat = path.stat()
    names = offending_names(info)
    fp.globals = names
    try:
        tc, conv, converted = _transcode(path, rel, names, allow)
    except TranscodeRefused as exc:
        _refuse(fp, str(exc), exc.hint)
        fp.globals = exc.names or names
        fp.hostile = exc.dangerous
        return prep
    left = leftover_captures(converted)
    if left:
        _refuse(fp, "no rule converts " + "; ".join(left))
        return prep
    fp.flavor = conv.flavor
    fp.changes = conv.changes
    if tc.downgraded is not None:  # read through pickles/downgrade.py: the file must be re-saved
        fp.changes = [_protocol_change(tc.downgraded.protocol)] + conv.changes
    fp.allowlist = sorted(conv.kept_names)
    head = rel.rpartition("/")[0]
    fp.sidecars = [(head + "/" if head else "") + s for s in conv.sidecars]
    prep.converted, prep.conv = converted, conv
    for c in fp.kept:
        fp.findings.append(Code.KEPT_ALLOWLISTED.finding(
            rel, f"{c.where}: {c.found} kept and allow-listed", hint=c.why))
    if to == RepairTarget.SAFETENSORS and _pure_tensors(converted):
        fp.target = safetensors_name(rel)
        backup = _interrupted_conversion(root, backup_root, fp, converted)
        if backup is not None:
            prep.finish_from = backup
            fp.action = SAFETENSORS
            fp.reason = (f"an interrupted run already wrote and verified {fp.target} and backed "
                         f"up the original to {backup}: only the original's removal is left")
        elif (root / fp.target).exists():
            fp.reason = f"{fp.target} already exists; not overwritten"
            fp.findings.append(Code.REPAIR_REFUSED.finding(
                rel, fp.reason, severity=Severity.WARNING,
                hint=f"remove or move {fp.target} to convert again"))
            fp.action = NOTHING
        else:
            fp.action = SAFETENSORS
        return prep
    if cand.for_safetensors:
        fp.reason = "not a pure tensor state dict: left as it is"
        return prep
    if fp.converts or conv.sidecars:
        fp.action = REWRITE
    elif fp.allowlist:
        entry = recorded.get(rel)
        if entry and entry.get("allowlist") == fp.allowlist and \
                entry.get("sha256") == sha256_file(path) and (root / al.SNIPPET_FILE).exists():
            fp.reason = f"already repaired: kept objects are allow-listed in {al.ALLOWLIST_FILE}"
        else:
            fp.action = ALLOWLIST
    else:
        fp.reason = "loads once its globals are read as data; nothing to convert"
    return prep


def _protocol_change(protocol: int) -> Change:
    """The plan line of a file whose pickle protocol > 2 was rewritten (pickles/downgrade.py)."""
    return Change("<pickle>", f"pickle protocol {protocol or '0/1'}", "pickle-protocol",
                  "protocol 2 (torch.save)",
                  "torch's weights-only unpickler only reads protocol-2 opcodes; the pickle was "
                  "rewritten opcode by opcode into protocol 2 (nothing run) to read it, and the "
                  "file is saved again with torch.save")


def convert_file(path: str | os.PathLike, allow: tuple[str, ...] | list[str] = (),
                 rel: str | None = None) -> tuple[Any, Converter]:
    """Transcode one torch file and apply the rules: (converted object, converter with its
    changes, RNG sites and sidecars). Nothing is written. Raises TranscodeRefused."""
    from ..formats import detect_file

    path = Path(path)
    rel = rel or path.name
    info = detect_file(path, rel)
    if not info.loadable or any(f.code in _SCAN_INCOMPLETE for f in info.findings):
        raise TranscodeRefused("the static scan finds code-executing or hidden globals: "
                               + ", ".join(sorted({g.name for g in info.dangerous})),
                               dangerous=True)
    _, conv, converted = _transcode(path, rel, offending_names(info), tuple(allow))
    return converted, conv


def _transcode(path: Path, rel: str, names: list[str], allow: tuple[str, ...]
               ) -> tuple[Transcoded, Converter, Any]:
    """Load `path` with stand-ins for `names` and apply the rules for its framework's flavour:
    (transcoded load, converter with its changes, converted object). Raises TranscodeRefused."""
    tc = transcoding_load(path, names, allow, covered_names(names))
    base = rel.rsplit("/", 1)[-1]
    conv = Converter(rel, file_flavour(rel, tc.obj), frozenset(allow), tc.marks,
                     file_stem=base.rsplit(".", 1)[0] if "." in base else base)
    return tc, conv, conv.convert(tc.obj)


# --- leftovers ------------------------------------------------------------------------------------
def _tmp_files(root: Path, backup_root: Path) -> list[Path]:
    found = leftovers(root) if root.exists() else []
    if backup_root.is_dir():
        for dirpath, _, files in os.walk(backup_root):
            found += [Path(dirpath) / f for f in files if f.startswith(TMP_MARKER)]
    return sorted(set(found))


def pid_alive(name: str) -> bool:
    m = re.match(re.escape(TMP_MARKER) + r"(\d+)-", name)
    if not m:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


# --- public: plan ---------------------------------------------------------------------------------
def _check_args(consumer: str, to: str) -> None:
    if consumer not in CONSUMERS:
        raise ValueError(f"consumer must be one of {CONSUMERS}, not {consumer!r}")
    if to not in TARGETS:
        raise ValueError(f"to must be one of {', '.join(TARGETS)}, not {to!r}")


def _plan(path: str | os.PathLike, allow: tuple[str, ...], consumer: str, to: str,
          backup_dir: str | os.PathLike | None) -> tuple[RepairPlan, list[PreparedFile]]:
    _check_args(consumer, to)
    to = RepairTarget(to)
    p = Path(path)
    root = _root_of(p)
    allow = tuple(dict.fromkeys(allow))
    plan = RepairPlan(str(path), root, consumer, to, allow)
    if not os.path.lexists(p):
        plan.findings.append(Code.PATH_MISSING.finding(str(path), f"{path}: no such file or "
                                                                 "directory"))
        return plan, []
    from ..pickles.policy import Verdict, vet

    bad_allow = [n for n in allow if vet(n, allow).verdict is Verdict.DANGEROUS]
    if bad_allow:
        plan.findings.append(Code.REPAIR_REFUSED.finding(
            str(path), "--allow names code-executing global(s): " + ", ".join(bad_allow),
            hint="--allow only vouches for data types; ckptdoctor never loads code"))
        return plan, []
    backup_root = Path(backup_dir) if backup_dir else default_backup_root(root)
    if in_backup_tree(p):
        plan.findings.append(Code.REPAIR_REFUSED.finding(
            str(path), f"{path} is inside a {BACKUP_DIRNAME} tree: backups are never repaired "
            "(that would nest backups inside backups)", hint="repair the checkpoint itself, or "
            "restore it with `ckptdoctor repair --undo`"))
        return plan, []
    if os.path.islink(backup_root):
        plan.findings.append(Code.REPAIR_REFUSED.finding(
            str(path), f"{backup_root} is a symlink: ckptdoctor does not write backups through "
            "it", hint="remove the symlink, or pass --backup-dir"))
        return plan, []
    for tmp in _tmp_files(root, backup_root):
        plan.leftovers.append(_rel(root, tmp))
    for s in sessions(backup_root):
        if not s.doc.get("complete") and not s.doc.get("undone") and s.doc.get("files"):
            plan.findings.append(Code.LEFTOVER_WRITE.finding(
                _rel(root, s.dir), "backup session of an interrupted repair: its originals "
                f"({len(s.doc['files'])} file(s)) are intact there", severity=Severity.INFO))
    cands, extra = _select(p, consumer, to, backup_root)
    plan.findings.extend(extra)
    from ..layouts.deepspeed import relink_latest  # hook: the rule lives in the layout

    plan.relink = relink_latest(root) if root.is_dir() else None
    if plan.relink is not None:  # the broken tag is abandoned, not rewritten: DeepSpeed
        abandoned = plan.relink[0].rstrip("/") + "/"  # resumes from the relinked one
        cands = [c for c in cands if not c.rel.startswith(abandoned)]
    recorded = al.revetted_entries(root, allow)  # input only, re-vetted; never authority
    prepared = [_prepare(root, c, allow, to, recorded, backup_root) for c in cands]
    plan.files = [x.plan for x in prepared]
    hostile = [f.rel for f in plan.files if f.hostile]
    if hostile:
        for f in plan.files:
            if f.action in (REWRITE, SAFETENSORS, ALLOWLIST):
                f.action = NOTHING
                f.reason = (f"not rewritten: {hostile[0]} may run code when loaded; nothing is "
                            "written until that file is dealt with")
    return plan, prepared


@dataclass
class PreparedRepair:
    """A plan and what applying it needs (each file's converted object and the stat it was
    read at). `apply_repair` executes exactly this plan: what the user saw and confirmed."""
    plan: RepairPlan
    files: list[PreparedFile]
    backup_root: Path


def prepare_repair(path: str | os.PathLike, *, allow: tuple[str, ...] | list[str] = (),
                   consumer: str = "framework", to: str = "torch",
                   backup_dir: str | os.PathLike | None = None) -> PreparedRepair:
    """Select the files the consumer cannot load and plan each (read, never run; nothing is
    written). Render `.plan`, ask, then `apply_repair` it."""
    plan, prepared = _plan(path, tuple(allow), consumer, to, backup_dir)
    backup_root = Path(backup_dir) if backup_dir else default_backup_root(plan.root)
    return PreparedRepair(plan, prepared, backup_root)


def plan_repair(path: str | os.PathLike, *, allow: tuple[str, ...] | list[str] = (),
                consumer: str = "framework", to: str = "torch",
                backup_dir: str | os.PathLike | None = None) -> RepairPlan:
    """Which files the consumer cannot load, which objects in them, what each becomes and
    why. Reads the files (never running code from them); writes nothing."""
    return prepare_repair(path, allow=allow, consumer=consumer, to=to,
                          backup_dir=backup_dir).plan


__all__ = ["plan_repair", "prepare_repair", "PreparedRepair", "PreparedFile", "convert_file",
           "safetensors_name", "CONSUMERS", "TARGETS"]
