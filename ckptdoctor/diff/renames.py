"""Prefix renames between the keys only one side has (`model.x` in A is `x` in B)."""

from __future__ import annotations

from collections import Counter


def detect_renames(a: set[str], b: set[str]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Prefix renames that map keys only in A onto keys only in B: [(old, new, pairs)], the
    biggest first. `model.x` vs `x` is ('model.', ''); `module.x` vs `model.x` is
    ('module.', 'model.'). A candidate counts only where it maps at least half of the smaller
    side (and at least one key)."""
    out = []
    a, b = set(a), set(b)
    while a and b:
        votes: Counter = Counter()
        for ka in sorted(a)[:64]:
            for kb in b:
                pa, pb = _split_common_suffix(ka, kb)
                if pa is not None:
                    votes[(pa, pb)] += 1
        best = None
        for (pa, pb), _n in votes.most_common(8):
            pairs = [(ka, pb + ka[len(pa):]) for ka in a
                     if ka.startswith(pa) and pb + ka[len(pa):] in b]
            if pairs and (best is None or len(pairs) > len(best[2])):
                best = (pa, pb, pairs)
        if best is None or len(best[2]) * 2 < min(len(a), len(b)):
            break
        out.append(best)
        a -= {x for x, _ in best[2]}
        b -= {y for _, y in best[2]}
    return out


def _split_common_suffix(ka: str, kb: str) -> tuple[str | None, str]:
    """(prefix of ka, prefix of kb) when both end in the same dotted suffix and differ only in
    their leading dotted components."""
    pa, pb = ka.split("."), kb.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    if n == 0 or (n == len(pa) and n == len(pb)):
        return None, ""
    head_a, head_b = pa[:len(pa) - n], pb[:len(pb) - n]
    return (".".join(head_a) + "." if head_a else ""), (".".join(head_b) + "." if head_b else "")
