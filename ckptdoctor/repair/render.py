"""Plain-text views of a RepairPlan and a RepairResult (pure functions; JSON is `.to_json()`)."""

from __future__ import annotations

from collections import defaultdict

from .model import (
    ALLOWLIST,
    NOTHING,
    REFUSED,
    REWRITE,
    SAFETENSORS,
    Change,
    FilePlan,
    RepairPlan,
    RepairResult,
)
from .rules import RULES_BY_NAME

ACTION_TEXT = {
    REWRITE: "rewrite (torch.save, verified, original backed up)",
    SAFETENSORS: "convert to safetensors (verified, original backed up)",
    ALLOWLIST: "keep as is; write its allow-list",
    NOTHING: "nothing to do",
    REFUSED: "REFUSED (not touched)",
}
MAX_WHERE = 4  # paths shown per group of identical changes


def _group(changes: list[Change]) -> list[tuple[Change, list[str]]]:
    """Identical changes (same rule, found, becomes) shown once with their paths."""
    groups: dict[tuple, list[Change]] = defaultdict(list)
    for c in changes:
        groups[(c.rule, c.found, c.becomes)].append(c)
    return [(cs[0], [c.where for c in cs]) for cs in groups.values()]


def _file_lines(f: FilePlan) -> list[str]:
    head = f"  {f.rel}: {ACTION_TEXT.get(f.action, f.action)}"
    if f.action == SAFETENSORS:
        head += f" -> {f.target}"
    lines = [head]
    if f.selected_because:
        lines.append(f"      selected: {f.selected_because}")
    if f.reason:
        lines.append(f"      {'reason' if f.action == REFUSED else 'note'}: {f.reason}")
    if f.hint:
        lines.append(f"      hint: {f.hint}")
    whys: dict[str, str] = {}
    for c, wheres in _group(f.changes):
        shown = ", ".join(wheres[:MAX_WHERE]) + (f" (+{len(wheres) - MAX_WHERE} more)"
                                                  if len(wheres) > MAX_WHERE else "")
        lines.append(f"      {shown}: {c.found} -> {c.becomes}  [{c.rule}]")
        rule = RULES_BY_NAME.get(c.rule)
        whys.setdefault(c.rule, rule.why if rule else c.why)
        if rule is not None and c.why != rule.why:
            lines.append(f"          ({c.why})")
    for rule_name, why in whys.items():
        lines.append(f"        why [{rule_name}]: {why}")
    for s in f.sidecars:
        lines.append(f"      sidecar: {s}")
    if f.allowlist:
        lines.append("      allow-list: " + ", ".join(f.allowlist))
    return lines


def render_plan(plan: RepairPlan) -> str:
    out = [f"ckptdoctor repair plan: {plan.path}  (consumer: {plan.consumer}, to: {plan.to})"]
    if plan.allow:
        out.append("  vouched for (--allow): " + ", ".join(plan.allow))
    if not plan.files and plan.relink is None:
        out.append("  nothing to repair: every file loads for the consumer")
    for f in plan.files:
        out.extend(_file_lines(f))
    if plan.relink is not None:
        out.append(f"  latest: {plan.relink[0]!r} -> {plan.relink[1]!r} (DeepSpeed: 'latest' "
                   "names a broken tag; the old file is backed up)")
    if plan.leftovers:
        out.append("  leftovers of an interrupted write (removed by the next real run):")
        out.extend(f"    {x}" for x in plan.leftovers)
    for x in plan.findings:
        out.append(f"  {x.code} {x.severity}: {x.path}: {x.message}")
    counts: defaultdict[str, int] = defaultdict(int)
    for f in plan.files:
        counts[f.action] += 1
    if plan.files:
        out.append("  summary: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    return "\n".join(out)


def render_result(result: RepairResult, with_plan: bool = False) -> str:
    """What the run did (`with_plan=True` puts the plan first, for callers that did not show
    it already)."""
    out = [render_plan(result.plan), ""] if with_plan else []
    if result.dry_run:
        out.append("dry run: nothing was written")
    for o in result.outcomes:
        line = f"  {o.rel}: {o.status}"
        if o.message:
            line += f" - {o.message}"
        out.append(line)
        if o.backup:
            out.append(f"      backup: {o.backup}")
        for c in o.checks:
            out.append(f"      verified: {c}")
    if result.backup_dir:
        out.append(f"backups: {result.backup_dir}  (undo: ckptdoctor repair --undo "
                   f"{result.plan.path})")
    for rel in result.leftovers_removed:
        out.append(f"removed leftover: {rel}")
    if result.allowlist_file:
        out.append(f"allow-list: {result.allowlist_file}")
        out.append(f"snippet: {result.snippet_file}")
    if result.snippet:
        out.append("kept objects load with:")
        out.extend("    " + line for line in result.snippet.splitlines())
    for x in result.findings:
        out.append(f"  {x.code} {x.severity}: {x.path}: {x.message}")
    out.append(f"exit code: {result.exit_code}")
    return "\n".join(out)


__all__ = ["render_plan", "render_result"]
