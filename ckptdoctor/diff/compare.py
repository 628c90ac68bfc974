"""`diff(A, B)`: read both sides, pair their entries section by section, compare every tensor
pair (optionally on threads), and derive the training state, moments, RNG and findings."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .findings import diff_findings
from .renames import detect_renames
from .report import DiffReport, Rename, Section, unreadable
from .sides import Side, open_side
from .state import optimizer_moments, short_repr, training_state, values_equal
from .tensors import compare_pair


def diff(a: str | os.PathLike, b: str | os.PathLike, *, rtol: float = 1e-5, atol: float = 1e-8,
         resume_equivalent: bool = False, jobs: int = 1, allow: tuple[str, ...] = (),
         trust: bool = False) -> DiffReport:
    """Compare checkpoints A and B. Raises DiffError (CK901) when a side cannot be read."""
    side_a = open_side(a, allow, trust)
    try:
        side_b = open_side(b, allow, trust)
    except BaseException:
        side_a.close()
        raise
    from ..convert.common import ConvertError

    try:
        return _diff(side_a, side_b, rtol, atol, resume_equivalent, max(1, int(jobs)))
    except ConvertError as exc:  # a tensor that does not load (DCP chunk, ZeRO partition)
        raise unreadable(exc.finding.path, f"{exc.finding.code} {exc.finding.message}",
                          exc.finding.hint) from None
    finally:
        side_a.close()
        side_b.close()


def _diff(sa: Side, sb: Side, rtol: float, atol: float, resume_equivalent: bool,
          jobs: int) -> DiffReport:
    rep = DiffReport(str(sa.path), str(sb.path), sa.kind, sb.kind, rtol, atol, resume_equivalent,
                     files_a=sa.files, files_b=sb.files)
    pairs: list[tuple[Section, str, str, Any, Any]] = []
    for section in Section:
        ta, tb = sa.tensors.get(section, {}), sb.tensors.get(section, {})
        va, vb = sa.values.get(section, {}), sb.values.get(section, {})
        only_a = set(sa.keys(section)) - sb.keys(section)
        only_b = set(sb.keys(section)) - sa.keys(section)
        mapping: dict[str, str] = {}
        if section is Section.WEIGHTS:
            for old, new, found in detect_renames(only_a & set(ta), only_b & set(tb)):
                rep.renames.append(Rename(section, old, new, len(found)))
                mapping.update(found)
            only_a -= set(mapping)
            only_b -= set(mapping.values())
        rep.only_a[section] = sorted(only_a)
        rep.only_b[section] = sorted(only_b)
        for key in sorted(set(ta) & set(tb)) + sorted(mapping):
            kb = mapping.get(key, key)
            if key in ta and kb in tb:
                pairs.append((section, key, kb, ta[key], tb[kb]))
        for key in sorted(set(ta) & set(vb) | set(va) & set(tb)):
            rep.values_differ[f"{section.value}:{key}"] = (
                "tensor" if key in ta else short_repr(va[key]),
                "tensor" if key in tb else short_repr(vb[key]))
        for key in sorted(set(va) & set(vb)):
            if values_equal(va[key], vb[key]):
                rep.values_same += 1
            else:
                rep.values_differ[f"{section.value}:{key}"] = (short_repr(va[key]),
                                                               short_repr(vb[key]))
    run = lambda p: compare_pair(p[0], p[1], p[2], p[3], p[4], sa, sb, rtol, atol)  # noqa: E731
    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rep.tensors = list(pool.map(run, pairs))
    else:
        rep.tensors = [run(p) for p in pairs]
    rep.state_a, rep.state_b = training_state(sa), training_state(sb)
    rep.moments = optimizer_moments(rep.tensors, sa, sb)
    rep.rng = {t.key: t.equal for t in rep.tensors if t.section is Section.RNG}
    for k in sorted(set(sa.values.get(Section.RNG, {})) & set(sb.values.get(Section.RNG, {}))):
        rep.rng[k] = f"rng:{k}" not in rep.values_differ
    rep.findings = diff_findings(rep)
    return rep
