"""The resume-equivalence check `repair` and `convert` run before they commit a rewrite:
`ckptdoctor diff ORIGINAL REWRITTEN --resume-equivalent`, as a library call.

A rewrite is accepted only when the diff finds no difference between the original and the
rewritten output (same entries in every section, no rename, bit-identical tensors with the
same dtype, equal values and RNG states; see docs/diff.md), except in entries the caller
names in `expected`: the entries a documented conversion changed on purpose (repair's rules
turn a numpy array into a tensor or a namespace into a dict; repair checks those exactly
against the converted original beforehand). A side the diff cannot read fails the check."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .codes import Code


@dataclass
class Equivalence:
    """What the diff found. `tensors` / `values`: how many pairs it compared; `explained`:
    differing entries covered by `expected`; `reasons`: the differences nothing explains."""

    ok: bool
    tensors: int = 0
    values: int = 0
    explained: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    original_unreadable: str = ""  # the diff's loader chain cannot read the original (CK901)

    def summary(self) -> str:
        if not self.ok:
            shown = "; ".join(self.reasons[:4]) + (" ..." if len(self.reasons) > 4 else "")
            return "not resume-equivalent to the original (diff --resume-equivalent): " + shown
        text = (f"resume-equivalent to the original (diff --resume-equivalent: {self.tensors} "
                f"tensors bit-identical, {self.values} values compared")
        if self.explained:
            text += f"; {len(self.explained)} entries differ only as the conversion intends"
        return text + ")"


def dotted(where: str) -> str:
    """repair's rendering of a path (`a.b[3]['x y']`) in the diff's key spelling (`a.b.3.x y`)."""
    out = re.sub(r"\[(\d+)\]", r".\1", where)
    out = re.sub(r"\[(['\"])(.*?)\1\]", r".\2", out)
    return out.lstrip(".")


def _covered(key: str, expected: tuple[str, ...]) -> bool:
    for p in expected:
        if key == p or key.startswith(p + "."):
            return True
        head, _, rest = p.partition(".")  # a state dict's own keys drop its top-level key
        if rest and (key == rest or key.startswith(rest + ".")):
            return True
    return False


def _resharded_ranks(rep: object, ranks: tuple[int, int]) -> bool:
    """The per-rank files of both sides are what a reshard N -> M gives: the same files, with
    the rank index of ZeRO's `zero_pp_rank_<r>_...` / DCP's `__<r>_<n>.distcp` files running
    over 0..N-1 and 0..M-1."""
    from .diff.report import rank_files

    def split(files: list[str]) -> tuple[dict[str, set[int]], list[str]]:
        by_name: dict[str, set[int]] = {}
        other = []
        for f in files:
            if m := _ZERO_RANK.search(f):
                by_name.setdefault(f[:m.start(1)] + "#" + f[m.end(1):], set()).add(int(m[1]))
            elif m := _DCP_RANK.match(f):  # any number of files per rank: one name
                by_name.setdefault("__#_n.distcp", set()).add(int(m[1]))
            else:
                other.append(f)
        return by_name, other

    (a, oa), (b, ob) = (split(fs) for fs in rank_files(rep))  # type: ignore[arg-type]
    return (oa == ob and set(a) == set(b) and bool(a)
            and all(a[k] == set(range(ranks[0])) and b[k] == set(range(ranks[1])) for k in a))


_ZERO_RANK = re.compile(r"zero_pp_rank_(\d+)_")
_DCP_RANK = re.compile(r"__(\d+)_\d+\.distcp$")


def check(original: str | os.PathLike, rewritten: str | os.PathLike, *,
          allow: Iterable[str] = (), trust: bool = False,
          expected: Iterable[str] = (), left_out: Iterable[str] = (),
          ranks: tuple[int, int] | None = None) -> Equivalence:
    """Diff `original` against `rewritten` in resume-equivalent mode. Never raises for an
    unreadable side: that is a failed check whose reason is the CK901 message. `ranks` (N, M):
    the rewrite is a ZeRO or DCP checkpoint resharded from N to M ranks, so its per-rank files
    (CK912) are expected to run over ranks 0..M-1 where the original has 0..N-1; any other
    per-rank difference still fails."""
    from . import diff as diffmod  # looked up at call time: the one diff, also for tests

    expected = tuple(dotted(e) for e in expected if e)
    left_out = tuple(dotted(e) for e in left_out if e)  # may be missing from the rewrite only
    try:
        rep = diffmod.diff(original, rewritten, resume_equivalent=True, allow=tuple(allow),
                           trust=trust)
    except diffmod.DiffError as exc:
        if exc.finding.path == str(original):  # the rewritten side was not even opened
            return Equivalence(False, original_unreadable=exc.finding.message,
                               reasons=[f"the diff cannot read the original: "
                                        f"{exc.finding.message}"])
        return Equivalence(False, reasons=[f"the diff cannot read the rewritten file: "
                                           f"{exc.finding.message}"])
    except Exception as exc:  # a reader that breaks on an odd object
        why = f"{type(exc).__name__}: {exc}"[:300]
        try:
            diffmod.open_side(original, tuple(allow), trust).close()
        except Exception:  # DiffError or the same failure on the original
            return Equivalence(False, original_unreadable=why,
                               reasons=[f"the diff cannot read the original: {why}"])
        return Equivalence(False, reasons=[f"the diff failed on the rewritten file: {why}"])
    differing: list[tuple[str, str]] = []  # (key, what)
    explained: list[str] = []
    for side, table in (("original", rep.only_a), ("rewritten file", rep.only_b)):
        for section, keys in table.items():
            for k in keys:
                what = f"{section.value} entry {k} only in the {side}"
                if table is rep.only_a and _covered(k, left_out):
                    explained.append(what + " (left out, as reported)")
                else:
                    differing.append((k, what))
    reasons = [f"keys renamed: {r.old!r} -> {r.new!r} ({r.count})" for r in rep.renames]
    for t in rep.tensors:
        if not t.equal:
            differing.append((t.key, f"{t.section.value} tensor {t.key} not bit-identical "
                                     f"({t.dtype_a} {list(t.shape_a)} vs {t.dtype_b} "
                                     f"{list(t.shape_b)})"))
    for key, (va, vb) in rep.values_differ.items():
        k = key.partition(":")[2]
        differing.append((k, f"{key}: {va} in the original, {vb} in the rewritten file"))
    if Path(original).is_dir() and Path(rewritten).is_dir():  # one file vs its rewrite: n/a
        for f in rep.findings:
            if f.code != Code.DIFF_RANKS.code:
                continue
            if ranks is not None and _resharded_ranks(rep, ranks):
                explained.append(f.message + f" (resharded {ranks[0]} -> {ranks[1]} ranks)")
            else:
                reasons.append(f.message)
    explained += [what for k, what in differing if _covered(k, expected)]
    reasons += [what for k, what in differing if not _covered(k, expected)]
    return Equivalence(not reasons, len(rep.tensors), rep.values_same + len(rep.values_differ),
                       explained, reasons)


__all__ = ["Equivalence", "check", "dotted"]
