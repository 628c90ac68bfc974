"""What a repair plans and what it did: plain dataclasses, rendered by repair/render.py.

A plan is computed before anything is written (`plan_repair`), and the same plan drives the
rewrite (`repair`), so `--dry-run` shows exactly what a real run would do."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import Finding, Severity


class Action(str, enum.Enum):
    """What a repair does to one file (`FilePlan.action`)."""

    REWRITE = "rewrite"  # converted objects: re-save with torch.save and replace the original
    SAFETENSORS = "safetensors"  # pure tensor state dict: write <name>.safetensors, back up
    ALLOWLIST = "allowlist"  # only kept objects: the file stays, an allow-list file is written
    NOTHING = "nothing"  # nothing to convert (already clean, or already allow-listed)
    REFUSED = "refused"  # dangerous, unknown or untranscodable: the file is not touched

    def __str__(self) -> str:
        return self.value


class Status(str, enum.Enum):
    """What a repair did to one file (`FileOutcome.status`)."""

    REPLACED = "replaced"
    CONVERTED = "converted"
    ALLOWLISTED = "allowlisted"
    UNCHANGED = "unchanged"
    VERIFY_FAILED = "verify-failed"
    SKIPPED = "skipped"  # dry run
    REFUSED = "refused"

    def __str__(self) -> str:
        return self.value


class RepairTarget(str, enum.Enum):
    """`repair --to`: what a rewritten file becomes."""

    TORCH = "torch"
    SAFETENSORS = "safetensors"  # only files that are pure tensor state dicts

    def __str__(self) -> str:
        return self.value


# the short names the engine and the renderer use
REWRITE, SAFETENSORS, ALLOWLIST, NOTHING, REFUSED = (
    Action.REWRITE, Action.SAFETENSORS, Action.ALLOWLIST, Action.NOTHING, Action.REFUSED)
REPLACED, CONVERTED, ALLOWLISTED, UNCHANGED, VERIFY_FAILED, SKIPPED = (
    Status.REPLACED, Status.CONVERTED, Status.ALLOWLISTED, Status.UNCHANGED,
    Status.VERIFY_FAILED, Status.SKIPPED)


@dataclass(frozen=True)
class Change:
    """One object in a file and what it becomes."""

    where: str  # key path inside the loaded object, e.g. "['numpy']" or "hyper_parameters.path"
    found: str  # what is there: the global behind it ("numpy.ndarray <u4 (624,)")
    rule: str  # the rule's name (repair/rules.py)
    becomes: str  # what it is rewritten to ("list of 624 ints"), or "kept" for allow-listed ones
    why: str
    keep: bool = False  # kept and allow-listed instead of converted

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "found": self.found, "rule": self.rule,
                "becomes": self.becomes, "keep": self.keep, "why": self.why}


@dataclass
class FilePlan:
    rel: str  # relative to the checkpoint root (the directory, or the file's parent)
    path: Path
    action: Action
    selected_because: str = ""  # the validate finding (or static verdict) that picked the file
    flavor: str = "torch"  # who wrote it, as far as the rules care (hf-trainer, megatron, ...)
    globals: list[str] = field(default_factory=list)  # offending globals (torch spelling)
    changes: list[Change] = field(default_factory=list)
    allowlist: list[str] = field(default_factory=list)  # names of kept objects
    sidecars: list[str] = field(default_factory=list)  # files written beside (relative to root)
    target: str = ""  # the file written (rel): same as rel, or the .safetensors name
    reason: str = ""  # why REFUSED / NOTHING
    hint: str = ""
    findings: list[Finding] = field(default_factory=list)
    hostile: bool = False  # may run code when loaded: nothing in the checkpoint is written

    @property
    def converts(self) -> list[Change]:
        return [c for c in self.changes if not c.keep]

    @property
    def kept(self) -> list[Change]:
        return [c for c in self.changes if c.keep]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.rel, "action": self.action, "selected_because": self.selected_because,
                "flavor": self.flavor, "globals": self.globals,
                "changes": [c.to_json() for c in self.changes], "allowlist": self.allowlist,
                "sidecars": self.sidecars, "target": self.target or self.rel,
                "reason": self.reason, "hint": self.hint, "hostile": self.hostile}


@dataclass
class RepairPlan:
    path: str  # as given
    root: Path  # directory holding the checkpoint files (PATH, or PATH's parent for a file)
    consumer: str
    to: RepairTarget
    allow: tuple[str, ...] = ()
    files: list[FilePlan] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # temp files of interrupted writes (rel)
    findings: list[Finding] = field(default_factory=list)
    # DeepSpeed: (old, new) content of `latest` when it names a broken tag and an older one is
    # complete (layouts/deepspeed.relink_latest decides; repair writes it, backed up)
    relink: tuple[str, str] | None = None

    @property
    def refused(self) -> list[FilePlan]:
        return [f for f in self.files if f.action == REFUSED]

    @property
    def writes(self) -> list[FilePlan]:
        return [f for f in self.files if f.action in (REWRITE, SAFETENSORS, ALLOWLIST)]

    @property
    def has_work(self) -> bool:
        """True when a real run would write something (not counting leftover clean-up)."""
        return bool(self.writes) or self.relink is not None

    @property
    def allowlist(self) -> list[str]:
        return sorted({n for f in self.files for n in f.allowlist})

    def all_findings(self) -> list[Finding]:
        return list(self.findings) + [x for f in self.files for x in f.findings]

    @property
    def exit_code(self) -> int:
        return 1 if any(f.severity is Severity.ERROR for f in self.all_findings()) else 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "root": str(self.root), "consumer": self.consumer,
                "to": self.to, "allow": list(self.allow),
                "files": [f.to_json() for f in self.files], "leftovers": self.leftovers,
                "allowlist": self.allowlist,
                "findings": [f.to_json() for f in self.all_findings()],
                "exit_code": self.exit_code}


@dataclass
class FileOutcome:
    rel: str
    status: Status
    message: str = ""
    backup: str = ""  # where the original was copied (absolute)
    target: str = ""  # the file now holding the data (rel)
    checks: list[str] = field(default_factory=list)  # verification steps that passed

    def to_json(self) -> dict[str, Any]:
        return {"path": self.rel, "status": self.status, "message": self.message,
                "backup": self.backup, "target": self.target or self.rel, "checks": self.checks}


@dataclass
class RepairResult:
    plan: RepairPlan
    dry_run: bool = False
    outcomes: list[FileOutcome] = field(default_factory=list)
    backup_dir: str = ""  # this run's backup session directory ("" when nothing was backed up)
    allowlist_file: str = ""  # ckptdoctor-allowlist.json written or confirmed ("" if none)
    snippet_file: str = ""
    snippet: str = ""  # ready-to-paste safe_globals code for kept objects
    leftovers_removed: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def all_findings(self) -> list[Finding]:
        return self.plan.all_findings() + list(self.findings)

    @property
    def exit_code(self) -> int:
        """0: every selected file is fixed (or nothing needed fixing); 1: a file was refused or
        failed verification (its original is untouched)."""
        return 1 if any(f.severity is Severity.ERROR for f in self.all_findings()) else 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def outcome(self, rel: str) -> FileOutcome | None:
        return next((o for o in self.outcomes if o.rel == rel), None)

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "dry_run": self.dry_run,
                "outcomes": [o.to_json() for o in self.outcomes],
                "backup_dir": self.backup_dir, "allowlist_file": self.allowlist_file,
                "snippet_file": self.snippet_file, "snippet": self.snippet,
                "leftovers_removed": self.leftovers_removed,
                "findings": [f.to_json() for f in self.all_findings()],
                "exit_code": self.exit_code}
