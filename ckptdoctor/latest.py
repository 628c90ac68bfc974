"""`latest`: the newest checkpoint under a run directory that passes validate."""

from __future__ import annotations

from pathlib import Path

from .inspect import checkpoint_paths
from .layouts import detect_layout, find_checkpoints
from .layouts.base import DirView
from .model import Severity
from .validate import ValidateOptions, exit_code, validate


def candidates(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint under run_dir, newest first."""
    view = DirView(run_dir)
    layout = detect_layout(view)
    rels = checkpoint_paths(layout.describe(view)) if layout else []
    if not rels and layout is None:
        rels = find_checkpoints(view)
    if not rels and layout is not None:
        rels = [""]
    out = []
    for rel in rels:
        sub = view.sub(rel) if rel else view
        lay = detect_layout(sub)
        step = lay.describe(sub).step if lay else None
        out.append((step if step is not None else -1, run_dir / rel if rel else run_dir))
    return sorted(out, key=lambda sp: (sp[0], str(sp[1])), reverse=True)


def newest_valid(run_dir: Path, consumer: str = "framework", allow: tuple[str, ...] = ()
                 ) -> tuple[Path | None, list[tuple[Path, str]]]:
    skipped: list[tuple[Path, str]] = []
    opts = ValidateOptions(consumer=consumer, allow=allow)
    for _, path in candidates(run_dir):
        _, findings = validate(path, opts)
        if exit_code(findings) == 0:
            return path, skipped
        worst = [f for f in findings if f.severity is Severity.ERROR]
        first = worst[0]
        more = f" (+{len(worst) - 1} more)" if len(worst) > 1 else ""
        skipped.append((path, f"{first.code} {first.path}: {first.message}{more}"))
    return None, skipped
