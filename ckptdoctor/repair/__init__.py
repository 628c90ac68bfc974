"""`ckptdoctor repair`: rewrite checkpoint files that torch.load(weights_only=True) (or the
framework resuming from them) refuses into files it loads, without ever running code from them.

    plan = plan_repair(path, allow=(), consumer="framework")   # what would change, and why
    print(render_plan(plan))
    result = repair(path, dry_run=False, backup_dir=None, no_backup=False, to="torch")
    undo(path)                                                  # restore the latest backup

Modules: transcode (the stand-in load), rules (the rewrite rule registry), pickler (re-saving
kept objects), verify (proof before replacement), backup (sessions and undo), allowlist (the
allow-list file and safe_globals snippet), engine (plan and apply), render (text views)."""

from __future__ import annotations

from .backup import undo
from .engine import CRASH_ENV, plan_repair, repair
from .model import Change, FileOutcome, FilePlan, RepairPlan, RepairResult
from .render import render_plan, render_result
from .rules import RULES, Rule

__all__ = ["plan_repair", "repair", "undo", "render_plan", "render_result", "RepairPlan",
           "RepairResult", "FilePlan", "FileOutcome", "Change", "RULES", "Rule", "CRASH_ENV"]
