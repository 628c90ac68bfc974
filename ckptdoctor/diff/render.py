"""Rendering a DiffReport (pure): the human text view, JSON, and the exit code."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..model import sorted_findings
from .report import RANK_FILE, DiffReport, Section, TensorDiff, fmt


def render_text(rep: DiffReport, width: int = 100, color: bool = False) -> str:
    """The human view. With color (a terminal) the tensor table is a rich table."""
    lines = [f"A: {rep.a} ({rep.kind_a})", f"B: {rep.b} ({rep.kind_b})"]
    sa, sb = rep.state_a, rep.state_b
    lines.append(f"step {sa.step} -> {sb.step}   epoch {sa.epoch} -> {sb.epoch}   "
                 f"lr {sa.lr} -> {sb.lr}")
    present = [f"{s}: {'A' if sa.has.get(s) else '-'}{'B' if sb.has.get(s) else '-'}"
               for s in (x.value for x in Section)]
    lines.append("sections " + ", ".join(present))
    by_section = Counter(t.section.value for t in rep.tensors)
    moved = Counter(t.section.value for t in rep.tensors if not t.equal)
    for section in Section:
        n = by_section.get(section.value, 0)
        oa, ob = len(rep.only_a.get(section, [])), len(rep.only_b.get(section, []))
        if n or oa or ob:
            lines.append(f"  {section.value:<10} {n} common tensor(s), "
                         f"{moved.get(section.value, 0)} changed, "
                         f"{n - moved.get(section.value, 0)} unchanged; {oa} only in A, "
                         f"{ob} only in B")
    frozen, moved_w = rep.unchanged(Section.WEIGHTS), rep.moved(Section.WEIGHTS)
    if frozen and moved_w:
        lines.append(f"unchanged weights (frozen or never trained): {', '.join(frozen[:10])}"
                     + (f" ... ({len(frozen)})" if len(frozen) > 10 else ""))
    ra, rb = (sorted(f for f in files if RANK_FILE.search(f))
              for files in (rep.files_a, rep.files_b))
    if ra or rb:
        lines.append(f"per-rank files: {len(ra)} in A, {len(rb)} in B")
    if rep.rng:
        same = sum(1 for v in rep.rng.values() if v)
        lines.append(f"rng: {same}/{len(rep.rng)} entries equal")
    if rep.moments:
        lines.append(f"optimizer moments for {len(rep.moments)} parameter(s)")
    changed = [t for t in rep.tensors if not t.equal]
    if changed:
        table = _table(changed[:50], width, color)
        lines.append(table.rstrip("\n"))
        if len(changed) > 50:
            lines.append(f"... {len(changed) - 50} more changed tensors (--format json lists all)")
    for param, row in list(rep.moments.items())[:5]:
        parts = [f"{k} |{fmt(_float(v['norm'][0]))}|->|{fmt(_float(v['norm'][1]))}|"
                 for k, v in row.items() if k != "step"]
        if "step" in row:
            parts.append(f"step {fmt(_float(row['step'][0]))}->{fmt(_float(row['step'][1]))}")
        lines.append(f"  param {param}: " + ", ".join(parts))
    if len(rep.moments) > 5:
        lines.append(f"  ... {len(rep.moments) - 5} more parameters (--format json lists all)")
    shown: Counter = Counter()
    total = Counter(f.code for f in rep.findings)
    for f in sorted_findings(rep.findings):
        shown[f.code] += 1
        if shown[f.code] > _PER_CODE:
            if shown[f.code] == _PER_CODE + 1:
                lines.append(f"{f.code} ... {total[f.code] - _PER_CODE} more like this "
                             "(--format json lists all)")
            continue
        lines.append(f"{f.code} {f.severity}: {f.message}")
        if f.hint:
            lines.append(f"  hint: {f.hint}")
    if rep.resume_equivalent_mode:
        lines.append("resume-equivalent: " + ("yes, B continues exactly as A" if rep.equal
                                              else "NO"))
    else:
        lines.append("equal" + (f" within rtol={rep.rtol:g}, atol={rep.atol:g}" if rep.equal
                                else ": no"))
    return "\n".join(lines) + "\n"


_PER_CODE = 8  # findings of one code shown in text before "... N more"


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


_COLUMNS = ("tensor", "section", "dtype", "shape", "max abs", "max rel", "cosine", "norm B/A",
            "NaN/Inf")


def _row(t: TensorDiff) -> list[str]:
    dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a}->{t.dtype_b}"
    shape = "x".join(map(str, t.shape_a)) if t.shape_a == t.shape_b else \
        f"{list(t.shape_a)}->{list(t.shape_b)}"
    return [t.key, t.section.value, dtype, shape or "()", fmt(t.max_abs), fmt(t.max_rel),
            fmt(t.cosine), fmt(t.norm_ratio), f"{t.nan_a + t.inf_a}/{t.nan_b + t.inf_b}"]


def _table(rows: list[TensorDiff], width: int, color: bool) -> str:
    if color:
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(*_COLUMNS, title="changed tensors", title_justify="left")
        for t in rows:
            table.add_row(*_row(t))
        buf = io.StringIO()
        Console(file=buf, width=width, force_terminal=True).print(table)
        return buf.getvalue()
    cells = [list(_COLUMNS)] + [_row(t) for t in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells) + "\n"


def to_json(rep: DiffReport) -> str:
    import json

    return json.dumps(rep.to_json(), indent=2, default=str)


def exit_code(rep: DiffReport) -> int:
    """0 equal (within tolerance / resume-equivalent), 1 different."""
    return 0 if rep.equal else 1
