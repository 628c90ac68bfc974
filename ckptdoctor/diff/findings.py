"""The differences of a report as CK9xx findings (NOT_RESUME_EQUIVALENT when asked)."""

from __future__ import annotations

from ..codes import Code
from ..model import Finding
from .report import DiffReport, Section, fmt, rank_files


def diff_findings(rep: DiffReport) -> list[Finding]:
    out: list[Finding] = []
    for section in Section:
        for side, keys in (("A", rep.only_a.get(section, [])), ("B", rep.only_b.get(section, []))):
            if not keys:
                continue
            other_has = (rep.state_b if side == "A" else rep.state_a).has.get(section.value)
            if section in (Section.OPTIMIZER, Section.SCHEDULER, Section.RNG) and not other_has:
                missing = "B" if side == "A" else "A"
                out.append(Code.DIFF_STATE_MISSING.finding(
                    section.value, f"{section.value} state only in {side}: resuming from "
                                   f"{missing} starts the {section.value} from scratch",
                    hint="resume from a checkpoint that has it (ckptdoctor latest RUN_DIR)",
                    side=side, count=len(keys)))
            else:
                out.append(Code.DIFF_KEYS.finding(
                    section.value, f"{len(keys)} {section.value} "
                                   f"entr{'y' if len(keys) == 1 else 'ies'} only in {side}: "
                                   + ", ".join(keys[:5])
                                   + (" ..." if len(keys) > 5 else ""), side=side, keys=keys))
    for r in rep.renames:
        out.append(Code.DIFF_RENAMED.finding(
            r.section.value, f"{r.count} keys renamed: prefix {r.old or '(none)'!r} in A is "
                             f"{r.new or '(none)'!r} in B",
            hint=f"ckptdoctor convert --strip-prefix {r.old}" if r.old and not r.new else "",
            old=r.old, new=r.new, count=r.count))
    for t in rep.tensors:
        where = f"{t.section.value}:{t.key}"
        if t.shape_a != t.shape_b:
            out.append(Code.DIFF_SHAPE.finding(where, f"{t.key}: shape {list(t.shape_a)} in A, "
                                                      f"{list(t.shape_b)} in B"))
        elif t.dtype_a != t.dtype_b:
            out.append(Code.DIFF_DTYPE.finding(where,
                                               f"{t.key}: {t.dtype_a} in A, {t.dtype_b} in B"))
        if t.shape_a == t.shape_b and not t.close and t.section is not Section.RNG:
            out.append(Code.DIFF_VALUES.finding(
                where, f"{t.key}: max abs diff {fmt(t.max_abs)}, max rel {fmt(t.max_rel)}, "
                       f"cosine {fmt(t.cosine)}, norm ratio {fmt(t.norm_ratio)}"))
        for side, nan, inf in (("A", t.nan_a, t.inf_a), ("B", t.nan_b, t.inf_b)):
            if nan or inf:
                out.append(Code.DIFF_NONFINITE.finding(where, f"{t.key}: {nan} NaN, {inf} Inf "
                                                              f"in {side}", side=side))
        zero = [s for s, z in (("A", t.zero_a), ("B", t.zero_b)) if z]
        if zero and t.section is Section.WEIGHTS:
            out.append(Code.DIFF_ZERO.finding(where, f"{t.key}: all zeros in {' and '.join(zero)}"
                                              + (" (never trained?)" if len(zero) == 1 else ""),
                                              sides=zero))
    for key, (va, vb) in rep.values_differ.items():
        code = Code.DIFF_RNG if key.partition(":")[0] == Section.RNG.value else Code.DIFF_STATE
        out.append(code.finding(key, f"{key.partition(':')[2]}: {va} in A, {vb} in B"))
    for t in rep.tensors:
        if t.section is Section.RNG and not t.equal:
            out.append(Code.DIFF_RNG.finding(f"rng:{t.key}", f"{t.key}: RNG state differs"))
    ra, rb = rank_files(rep)
    if ra != rb:
        out.append(Code.DIFF_RANKS.finding("", f"per-rank files: {len(ra)} in A, {len(rb)} in B; "
                                               f"only in A: {sorted(set(ra) - set(rb))[:4]}, "
                                               f"only in B: {sorted(set(rb) - set(ra))[:4]}"))
    if rep.resume_equivalent_mode:
        reasons = rep._resume_reasons()
        if reasons:
            out.append(Code.NOT_RESUME_EQUIVALENT.finding(
                "", "B would not resume exactly as A: " + "; ".join(reasons), reasons=reasons))
    return out
