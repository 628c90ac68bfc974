"""`latest`: the newest checkpoint under a run directory that passes validate.

Never a silent empty answer: when nothing is valid, stderr says why for each checkpoint,
which ones `ckptdoctor repair` would make resumable (with the exact command), and for a
DeepSpeed save dir whose `latest` names a broken tag, the older complete tag and how to
resume from it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .codes import Code
from .layouts import checkpoint_paths, detect_layout, find_checkpoints
from .layouts.base import DirView
from .model import Finding, Severity
from .storage import AnyPath
from .validate import ValidateOptions, exit_code, validate

# error codes `ckptdoctor repair` fixes by rewriting the file (the consumer cannot load it)
REPAIRABLE = (Code.LOAD_FAILS.code,)


def candidates(run_dir: AnyPath) -> list[tuple[int, AnyPath]]:
    """(step, path) of every checkpoint under run_dir, newest first: ordered by the step each
    layout records (trainer_state.json's global_step before the directory name), as an
    integer, so checkpoint-10 comes before checkpoint-5."""
    view = DirView(run_dir)
    layout = detect_layout(view)
    rels = checkpoint_paths(layout, view) if layout else []
    if not rels and layout is None:
        rels = find_checkpoints(view)
    if not rels and layout is not None:
        rels = [""]
    out = []
    for rel in rels:
        sub = view.sub(rel) if rel else view
        lay = detect_layout(sub)
        step = lay.describe(sub).step if lay else None
        out.append((step if isinstance(step, int) else -1, run_dir / rel if rel else run_dir))
    return sorted(out, key=lambda sp: (sp[0], str(sp[1])), reverse=True)


@dataclass
class Skipped:
    path: AnyPath
    reason: str  # the first error finding, with its code
    repair: str | None = None  # the command that makes it resumable, when repair can


@dataclass
class LatestResult:
    best: AnyPath | None
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stderr_lines(self) -> list[str]:
        lines = [f"skipped {s.path}: {s.reason}" for s in self.skipped]
        lines += self.notes
        repairable = [s for s in self.skipped if s.repair]
        if self.best is None:
            if repairable:
                lines.append(f"ckptdoctor: no checkpoint is resumable as it is; "
                             f"{len(repairable)} can be repaired:")
                lines += [f"  {s.repair}" for s in repairable]
                lines.append("then run `ckptdoctor latest` again")
            else:
                lines.append("ckptdoctor: no valid checkpoint (nothing `ckptdoctor repair` "
                             "can fix)")
        elif repairable:
            lines.append("newer checkpoint(s) can be repaired: "
                         + "; ".join(s.repair or "" for s in repairable))
        return lines


def _first_error(findings: list[Finding]) -> str:
    worst = [f for f in findings if f.severity is Severity.ERROR]
    first = worst[0]
    more = f" (+{len(worst) - 1} more)" if len(worst) > 1 else ""
    return f"{first.code} {first.path}: {first.message}{more}"


def _repair_command(path: AnyPath, findings: list[Finding], consumer: str,
                    allow: tuple[str, ...]) -> str | None:
    """`ckptdoctor repair PATH --yes` when every error is a load failure repair rewrites away
    (its plan writes each of those files and refuses none), else None."""
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if not errors or any(f.code not in REPAIRABLE for f in errors):
        return None
    if not isinstance(path, Path):  # a remote checkpoint: repair refuses URLs (docs/remote.md)
        return None
    from .repair import plan_repair

    plan = plan_repair(path, allow=allow, consumer=consumer)
    writes = {f.rel for f in plan.writes}
    if plan.refused or not all(f.path in writes for f in errors):
        return None
    flags = "".join(f" --allow {shlex.quote(a)}" for a in allow)
    flags += " --consumer torch" if consumer == "torch" else ""
    return f"ckptdoctor repair --yes{flags} {shlex.quote(str(path))}"


def newest_valid(run_dir: AnyPath, consumer: str = "framework", allow: tuple[str, ...] = (),
                 versions: dict[str, str] | None = None) -> LatestResult:
    opts = ValidateOptions(consumer=consumer, allow=allow, versions=dict(versions or {}))
    result = LatestResult(None)
    for _, path in candidates(run_dir):
        _, findings = validate(path, opts)
        if exit_code(findings) == 0:
            result.best = path
            return result
        older = next((f for f in findings if f.code == Code.OLDER_TAG_RESUMABLE.code), None)
        if older is not None:  # DeepSpeed: `latest` names a broken tag, an older one is whole
            tag = older.detail["tag"]
            save_dir = path / older.path if older.path else path  # the DeepSpeed save dir
            result.skipped.append(Skipped(path, _first_error(findings)))
            result.notes.append(
                f"'latest' in {save_dir} names a broken tag; resume from the complete tag "
                f"{tag}: engine.load_checkpoint({str(save_dir)!r}, tag={tag!r}), or make it "
                f"the default with: ckptdoctor repair --yes {shlex.quote(str(save_dir))}")
            result.best = save_dir / tag
            return result
        result.skipped.append(Skipped(path, _first_error(findings),
                                      _repair_command(path, findings, consumer, allow)))
    return result
