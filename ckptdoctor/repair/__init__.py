"""`ckptdoctor repair`: rewrite checkpoint files that torch.load(weights_only=True) (or the
framework resuming from them) refuses into files it loads, without ever running code from them.

    plan = plan_repair(path, allow=(), consumer="framework")   # what would change, and why
    print(render_plan(plan))
    result = repair(path, dry_run=False, backup_dir=None, no_backup=False, to="torch")
    prepared = prepare_repair(path)          # select + plan; show prepared.plan, ask, then
    result = apply_repair(prepared)          # execute exactly the plan that was confirmed
    undo(path)                                                  # restore the latest backup

Modules: transcode (the stand-in load), rules (the rewrite rule registry), pickler (re-saving
kept objects), verify (proof before replacement), backup (sessions and undo), allowlist (the
allow-list file and safe_globals snippet), engine (plan and apply), render (text views)."""

from __future__ import annotations

from .backup import undo
from .engine import CRASH_ENV, apply_repair, repair
from .model import Change, FileOutcome, FilePlan, RepairPlan, RepairResult
from .plan import PreparedRepair, plan_repair, prepare_repair
from .render import render_plan, render_result
from .rulebase import Rule
from .rules import RULES

__all__ = ["plan_repair", "prepare_repair", "apply_repair", "PreparedRepair", "repair", "undo",
           "render_plan", "render_result", "RepairPlan",
           "RepairResult", "FilePlan", "FileOutcome", "Change", "RULES", "Rule", "CRASH_ENV"]
