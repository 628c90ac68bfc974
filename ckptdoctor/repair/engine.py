"""plan_repair and repair: select files, transcode, convert, save, verify, back up, replace.

Order of operations for each rewritten file (crash-safe at every step):

    save the converted object to a temp file beside the original   (atomic.staged_file;
        tensor records copied from the original in pieces: repair/stream_save.py)
    fsync it; verify it (repair/verify.py)                         -> REPAIR_VERIFY on failure
    check the original did not change since it was read
    copy the original into the backup session, hash-checked, fsynced; record it in the manifest
    write sidecars / the allow-list (atomically), recorded in the manifest first
    rename the temp file over the original, fsync the directory    (atomic.commit)

A kill at any point leaves the original, or the verified new file with its backup in place;
temp files left behind carry atomic.TMP_MARKER and the next run removes them."""

from __future__ import annotations

import os
import re
import stat as stat_mod
from collections import Counter as _Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import TMP_MARKER, commit, fsync_dir, leftovers, staged_file, write_bytes
from ..codes import Code
from ..layouts import file_flavour
from ..model import FileInfo, Finding, FormatName, ScanState, Severity
from . import allowlist as al
from .backup import (
    BACKUP_DIRNAME,
    Session,
    checkpoint_root,
    default_backup_root,
    in_backup_tree,
    sessions,
    sha256_file,
)
from .model import (
    ALLOWLIST,
    ALLOWLISTED,
    CONVERTED,
    NOTHING,
    REFUSED,
    REPLACED,
    REWRITE,
    SAFETENSORS,
    SKIPPED,
    UNCHANGED,
    VERIFY_FAILED,
    Change,
    FileOutcome,
    FilePlan,
    RepairPlan,
    RepairResult,
    RepairTarget,
    Status,
)
from .rules import covered_names
from .transcode import Transcoded, TranscodeRefused, offending_names, transcoding_load
from .verify import VerifyError, verify_safetensors_file, verify_torch_file
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
CRASH_ENV = "CKPTDOCTOR_TEST_CRASH_AT"  # test hook: "<point>[:<nth>]" -> os._exit(137) there
CRASH_POINTS = ("tmp-written", "verified", "backed-up", "sidecars-written", "committed")
_crash_counts: _Counter = _Counter()


def _crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _crash_counts[name] += 1
    if _crash_counts[name] >= int(nth or 1):
        os._exit(137)


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
class _Prepared:
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
             recorded: dict[str, Any], backup_root: Path) -> _Prepared:
    rel = cand.rel
    path = root / rel
    fp = FilePlan(rel, path, NOTHING, selected_because=cand.reason, target=rel)
    prep = _Prepared(fp)
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


def _pid_alive(name: str) -> bool:
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
          backup_dir: str | os.PathLike | None) -> tuple[RepairPlan, list[_Prepared]]:
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
    files: list[_Prepared]
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


# --- public: repair -------------------------------------------------------------------------------
class _Run:
    def __init__(self, plan: RepairPlan, result: RepairResult, backup_root: Path,
                 no_backup: bool):
        self.plan = plan
        self.root = plan.root
        self.result = result
        self.backup_root = backup_root
        self.no_backup = no_backup
        self.session: Session | None = None

    def has_manifest(self) -> bool:
        from ..validate import MANIFEST

        return (self.root / MANIFEST).is_file()

    def sess(self) -> Session | None:
        if self.no_backup:
            return None
        if self.session is None:
            self.session = Session.create(self.backup_root, self.root)
            self.result.backup_dir = str(self.session.dir)
        return self.session

    def write_side(self, rel: str, data: bytes, owner: str) -> bool:
        """Write a sidecar atomically; back it up first if it exists with other content."""
        target = self.root / rel
        if target.is_file():
            if target.read_bytes() == data:
                return False
            s = self.sess()
            if s is not None and not any(e["rel"] == rel for e in s.doc["files"]) and \
                    not any(c["rel"] == rel for c in s.doc["created"]):
                s.backup(rel, target, kind="sidecar")
        else:
            s = self.sess()
            if s is not None:
                s.created(rel, owner)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, data)
        return True

    def write_allowlist(self, fp: FilePlan, sha: str) -> None:
        entry = {"allowlist": fp.allowlist, "sha256": sha,
                 "why": {c.found: c.why for c in fp.kept}}
        # the allow-list lives in the checkpoint root (PATH, or the file's directory)
        doc = al.merged_document(al.revetted_entries(self.root, self.plan.allow), {fp.rel: entry})
        self.write_side(al.ALLOWLIST_FILE, al.render_document(doc), fp.rel)
        self.write_side(al.SNIPPET_FILE, al.render_module(), fp.rel)
        self.result.allowlist_file = str(self.root / al.ALLOWLIST_FILE)
        self.result.snippet_file = str(self.root / al.SNIPPET_FILE)

    def update_manifest(self, old_rel: str, old_sha: str, new_rel: str, new_path: Path
                        ) -> None:
        """Keep a `validate --write-manifest` record true: the entry of a file repair replaced
        (only if it recorded the original) now describes the verified new file."""
        from ..manifest import replaced
        from ..validate import MANIFEST

        mpath = self.root / MANIFEST
        if not mpath.is_file():
            return
        data = replaced(mpath, old_rel, old_sha, new_rel, sha256_file(new_path),
                        new_path.stat().st_size)
        if data is not None:
            self.write_side(MANIFEST, data, old_rel)

    def unchanged_since_read(self, prep: _Prepared) -> bool:
        try:  # lstat: a file swapped for a symlink (even to the same inode) is a change
            now = os.lstat(prep.plan.path)
        except OSError:  # deleted (or its directory) since it was planned
            return False
        old = prep.stat
        if old is None or not stat_mod.S_ISREG(now.st_mode):
            return False
        return (now.st_size, now.st_mtime_ns, now.st_ino) == (old.st_size, old.st_mtime_ns,
                                                               old.st_ino)

    def fail(self, fp: FilePlan, exc: Exception, code: Code = Code.REPAIR_VERIFY) -> FileOutcome:
        msg = str(exc)
        self.result.findings.append(code.finding(
            fp.rel, f"{code.title}: {msg}" if code is Code.REPAIR_VERIFY else msg,
            hint="the original is untouched" if code is Code.REPAIR_VERIFY else ""))
        return FileOutcome(fp.rel, VERIFY_FAILED if code is Code.REPAIR_VERIFY else Status.REFUSED,
                           msg)

    def resume_equivalent(self, fp: FilePlan, tmp: Path) -> str:
        """The last verification step: `diff ORIGINAL NEW --resume-equivalent` must say yes."""
        from ..equivalence import check

        eq = check(fp.path, tmp, allow=tuple(self.plan.allow) + tuple(fp.allowlist),
                   expected=[c.where for c in fp.converts if c.rule not in DIFF_SEES_THROUGH])
        if eq.original_unreadable:  # what this repair fixes: only the transcoder reads it
            return ("diff --resume-equivalent not applicable: the original does not load "
                    "through the loader chain (the checks above compared it instead)")
        if not eq.ok:
            raise VerifyError(eq.summary())
        return eq.summary()

    # -- one file --
    def rewrite(self, prep: _Prepared) -> FileOutcome:
        from .stream_save import SourceChanged, save_repaired

        fp = prep.plan
        path = fp.path
        conv, read_stat = prep.conv, prep.stat
        assert conv is not None and read_stat is not None  # planning prepares both to rewrite
        with staged_file(path) as tmp:
            try:  # the tensors' bytes are copied from the original record by record
                save_repaired(prep.converted, tmp, path, read_stat)
                os.chmod(tmp, stat_mod.S_IMODE(read_stat.st_mode))
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            except SourceChanged as exc:
                return self.fail(fp, exc, Code.REPAIR_REFUSED)
            except Exception as exc:  # a value torch cannot save
                return self.fail(fp, VerifyError(f"torch.save of the converted object failed: "
                                                 f"{exc}"[:400]))
            _crash_point("tmp-written")
            try:
                checks = verify_torch_file(tmp, prep.converted, conv, fp.allowlist,
                                           original=path)
                checks.append(self.resume_equivalent(fp, tmp))
            except VerifyError as exc:
                return self.fail(fp, exc)
            _crash_point("verified")
            if not self.unchanged_since_read(prep):
                return self.fail(fp, RuntimeError("the file changed while it was repaired; "
                                                  "run repair again"), Code.REPAIR_REFUSED)
            s = self.sess()
            backup = str(s.backup(fp.rel, path)) if s is not None else ""
            old_sha = s.doc["files"][-1]["sha256"] if s is not None else (
                sha256_file(path) if self.has_manifest() else "")
            _crash_point("backed-up")
            for name, data in conv.sidecars.items():
                head = fp.rel.rpartition("/")[0]
                self.write_side((head + "/" if head else "") + name, data, fp.rel)
            new_sha = sha256_file(tmp)
            if fp.allowlist:
                self.write_allowlist(fp, new_sha)
            _crash_point("sidecars-written")
            commit(tmp, path)
            _crash_point("committed")
            if s is not None:
                s.set_status(fp.rel, "replaced", sha256_new=new_sha)
        self.update_manifest(fp.rel, old_sha, fp.rel, path)
        return FileOutcome(fp.rel, REPLACED, "rewritten and verified", backup, fp.rel, checks)

    def to_safetensors(self, prep: _Prepared) -> FileOutcome:
        from safetensors.torch import save_file

        fp = prep.plan
        target = self.root / fp.target
        if prep.finish_from is not None:
            if not self.unchanged_since_read(prep):  # not the original that was backed up
                return self.fail(fp, RuntimeError("the file changed since it was planned; "
                                                  "run repair again"), Code.REPAIR_REFUSED)
            fp.path.unlink()
            fsync_dir(fp.path.parent)
            return FileOutcome(fp.rel, CONVERTED, "finished an interrupted conversion: "
                                                  f"{fp.target} "
                               f"was already verified; original backed up at {prep.finish_from}",
                               str(prep.finish_from), fp.target)
        tensors = _dealias(prep.converted)
        with staged_file(target) as tmp:
            try:
                save_file(tensors, str(tmp), metadata={"format": "pt"})
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                checks = verify_safetensors_file(tmp, prep.converted)
                checks.append(self.resume_equivalent(fp, tmp))
            except VerifyError as exc:
                return self.fail(fp, exc)
            except Exception as exc:  # a value torch cannot save
                return self.fail(fp, VerifyError(f"safetensors save failed: {exc}"[:400]))
            if not self.unchanged_since_read(prep):
                return self.fail(fp, RuntimeError("the file changed while it was converted"),
                                 Code.REPAIR_REFUSED)
            s = self.sess()
            backup = ""
            if s is not None:
                backup = str(s.backup(fp.rel, fp.path))
                s.created(fp.target, fp.rel)
            _crash_point("backed-up")
            commit(tmp, target)
            _crash_point("committed")
        if s is not None:  # the original lives on in the backup; without one it stays
            fp.path.unlink()
            fsync_dir(fp.path.parent)
            s.set_status(fp.rel, "converted", target=fp.target)
            self.update_manifest(fp.rel, next(e["sha256"] for e in s.doc["files"]
                                              if e["rel"] == fp.rel), fp.target, target)
            msg = f"written as {fp.target}; original moved to the backup"
        else:
            msg = f"written as {fp.target}; original left in place (--no-backup)"
        return FileOutcome(fp.rel, CONVERTED, msg, backup, fp.target, checks)

    def allowlist_only(self, prep: _Prepared) -> FileOutcome:
        fp = prep.plan
        from .transcode import load_registered, standin_entries
        from .verify import compare

        if not self.unchanged_since_read(prep):  # never load a file the plan did not scan
            return self.fail(fp, RuntimeError("the file changed since it was planned; run "
                                              "repair again"), Code.REPAIR_REFUSED)
        try:  # the file as it is must load with exactly the allow-list we write
            obj = load_registered(fp.path, standin_entries(fp.allowlist, capture_types=False))
        except Exception as exc:
            return self.fail(fp, VerifyError(f"does not load with the allow-list: {exc}"[:400]))
        diff = compare(obj, prep.converted)
        if diff:
            return self.fail(fp, VerifyError(f"allow-listed load differs: {diff}"))
        self.write_allowlist(fp, sha256_file(fp.path))
        return FileOutcome(fp.rel, ALLOWLISTED, "kept objects allow-listed in "
                           f"{al.ALLOWLIST_FILE}; file unchanged", target=fp.rel,
                           checks=["torch.load(weights_only=True) loads it with exactly the "
                                   "written allow-list"])


def _dealias(obj: dict) -> dict:
    """safetensors refuses tensors sharing storage: give repeats their own copy."""
    out, seen = {}, set()
    for k, t in obj.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t.contiguous()
    return out


def repair(path: str | os.PathLike, *, allow: tuple[str, ...] | list[str] = (),
           dry_run: bool = False, backup_dir: str | os.PathLike | None = None,
           no_backup: bool = False, to: str = "torch", consumer: str = "framework"
           ) -> RepairResult:
    """Rewrite every file the consumer cannot load into one it can, verified, with backups.

    `allow`: globals of unknown safety the user vouches are plain data (they are still read
    with stand-ins; this never turns on weights_only=False). Returns a RepairResult whose
    `exit_code` is 1 when a file was refused or failed verification."""
    return apply_repair(prepare_repair(path, allow=allow, consumer=consumer, to=to,
                                       backup_dir=backup_dir), dry_run=dry_run,
                        no_backup=no_backup)


def apply_repair(prepared: PreparedRepair, *, dry_run: bool = False,
                 no_backup: bool = False) -> RepairResult:
    """Execute a prepared plan, file by file: backed up, written atomically, verified. A file
    that changed since it was planned is not touched (its outcome says so); files that
    appeared since are not part of the plan and are left alone."""
    plan, prepared_files, backup_root = prepared.plan, prepared.files, prepared.backup_root
    result = RepairResult(plan, dry_run=dry_run)
    kept_all = sorted({n for f in plan.files for n in f.allowlist})
    if kept_all:
        result.snippet = al.safe_globals_snippet(kept_all, allow=plan.allow)
    if dry_run:
        result.outcomes = [FileOutcome(f.rel, SKIPPED if f.action in (REWRITE, SAFETENSORS,
                                                                       ALLOWLIST)
                                       else (Status.REFUSED if f.action == REFUSED
                                             else UNCHANGED),
                                       f.reason or "dry run: nothing written")
                           for f in plan.files]
        return result
    run = _Run(plan, result, backup_root, no_backup)
    for rel in plan.leftovers:
        tmp = plan.root / rel if not os.path.isabs(rel) else Path(rel)
        if _pid_alive(tmp.name):
            result.findings.append(Code.LEFTOVER_WRITE.finding(
                rel, "temporary file of a ckptdoctor process still running; left alone"))
            continue
        try:
            tmp.unlink()
            fsync_dir(tmp.parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            result.findings.append(Code.LEFTOVER_WRITE.finding(rel, f"cannot remove: {exc}"))
            continue
        result.leftovers_removed.append(rel)
        result.findings.append(Code.LEFTOVER_WRITE.finding(
            rel, "removed temporary file of an interrupted ckptdoctor write",
            severity=Severity.INFO))
    for prep in prepared_files:
        fp = prep.plan
        if fp.action == REWRITE:
            outcome = run.rewrite(prep)
        elif fp.action == SAFETENSORS:
            outcome = run.to_safetensors(prep)
        elif fp.action == ALLOWLIST:
            outcome = run.allowlist_only(prep)
        elif fp.action == REFUSED:
            outcome = FileOutcome(fp.rel, Status.REFUSED, fp.reason)
        else:
            outcome = FileOutcome(fp.rel, UNCHANGED, fp.reason)
        result.outcomes.append(outcome)
        prep.converted = None  # release mmapped originals as we go
    if plan.relink is not None:  # DeepSpeed `latest` -> the newest complete tag, backed up
        run.write_side("latest", plan.relink[1].encode(), "latest")
        result.findings.append(Code.OLDER_TAG_RESUMABLE.finding(
            "latest", f"'latest' now names {plan.relink[1]} (was {plan.relink[0]!r}); "
            "load_checkpoint(tag=None) resumes from it", tag=plan.relink[1],
            was=plan.relink[0]))
    if run.session is not None:
        run.session.finish()
    return result


__all__ = ["plan_repair", "prepare_repair", "apply_repair", "PreparedRepair", "repair",
           "safetensors_name", "CRASH_ENV",
           "CRASH_POINTS"]
