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
import stat as stat_mod
from collections import Counter as _Counter
from pathlib import Path

from ..atomic import commit, fsync_dir, staged_file, write_bytes
from ..codes import Code
from ..model import Severity
from . import allowlist as al
from .backup import (
    Session,
    sha256_file,
)
from .model import (
    ALLOWLIST,
    ALLOWLISTED,
    CONVERTED,
    REFUSED,
    REPLACED,
    REWRITE,
    SAFETENSORS,
    SKIPPED,
    UNCHANGED,
    VERIFY_FAILED,
    FileOutcome,
    FilePlan,
    RepairPlan,
    RepairResult,
    Status,
)
from .plan import DIFF_SEES_THROUGH, PreparedFile, PreparedRepair, pid_alive, prepare_repair
from .verify import VerifyError, verify_safetensors_file, verify_torch_file

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

    def unchanged_since_read(self, prep: PreparedFile) -> bool:
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
    def rewrite(self, prep: PreparedFile) -> FileOutcome:
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

    def to_safetensors(self, prep: PreparedFile) -> FileOutcome:
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

    def allowlist_only(self, prep: PreparedFile) -> FileOutcome:
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
        if pid_alive(tmp.name):
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


__all__ = ["apply_repair", "repair", "CRASH_ENV", "CRASH_POINTS"]

