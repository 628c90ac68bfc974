"""`reshard`'s checks of the staged output, before it is renamed into place.

1. The split itself (`verify_split`, ZeRO-1/2; ZeRO-3's is `reshard_zero3._verify3`): every
   written rank file re-read, one at a time in VERIFY_CHUNK pieces: the new partitions joined
   in rank order equal the old ones, paddings hold zeros, sizes are DeepSpeed's.
2. Resume equivalence (`resume_hook`): `ckptdoctor diff SRC STAGED --resume-equivalent`
   (ckptdoctor/equivalence.py), the check `repair` and `convert` run on their rewrites. The
   diff reads both sides unsharded per parameter (weights and every optimizer moment), so the
   world size alone is no difference. Expected, and accounted for by name: the per-rank files
   (zero_pp_rank_0..N-1 -> 0..M-1) and the per-rank values the policy copied from rank 0
   (CK735: in the source one value per rank, `rank<q>.state.<s>.<key>`, in the output one for
   the group, `group_state.<g>.<key>`). Anything else that differs refuses the output: CK706
   naming it, and nothing appears at DST.

Either failure raises CK706 (CONVERT_VERIFY); --no-verify skips both."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .codes import Code
from .convert.common import ConvertError, Options
from .convert.loading import load_torch
from .reshard_base import OSD

VERIFY_CHUNK = 1 << 20  # elements compared at a time by the post-write check
_PER_GROUP = re.compile(r"^optimizer_state_dict\.(?:base_optimizer_state|optimizer_state_dict)"
                        r"\.state\.(\d+)\.(.+)$")


def account_per_rank(result: Any, keys: list[str], old_world: int,
                     owner: dict[int, int] | None = None) -> None:
    """What the diff will show for per-rank optimizer values copied from rank 0 (CK735 keys):
    each old rank's value (`rank<q>.state.<s>.<key>`) not in the output, one value for the
    param group (`group_state.<g>.<key>`, g = owner[s]; ZeRO-1/2: g = s) only in it."""
    for k in keys:
        m = _PER_GROUP.match(k)
        if not m:
            continue  # not read by the diff (or the same on both sides: rank 0's copied)
        s, key = int(m[1]), m[2]
        result.left_out += [f"rank{q}.state.{s}.{key}" for q in range(old_world)]
        result.expected.append(f"group_state.{(owner or {}).get(s, s)}.{key}")


def resume_hook(src: Path, tag: Path, result: Any, opts: Options) -> Callable[[Any], None]:
    """The Staging BEFORE_COMMIT hook: the staged output must be resume-equivalent to SRC.
    SRC given as the tag directory is compared with the staged tag directory (the same view:
    a directory's own files are listed as well)."""

    def before_commit(staging: Any) -> None:
        from .convert.resume_check import require
        from .equivalence import check

        out = staging.dir / tag.name if src.resolve() == tag.resolve() else staging.dir
        eq = check(src, out, allow=opts.allow, trust=opts.trust,
                   expected=result.expected, left_out=result.left_out,
                   ranks=(result.old_world, result.new_world))
        result.equivalence = eq
        require(eq, staging.dst, "reshard verification failed")

    return before_commit


def verify_split(tagdir: Path, names: list[str], plan: list, opts: Options, world: int) -> None:
    """Re-read the written rank files: concatenated in rank order, the new fp32 partitions and
    optimizer moments must equal the old ones concatenated; paddings hold zeros; every rank's
    partition has the size DeepSpeed gives it. One rank file at a time, its pages dropped after
    (the memory bound holds for the check too)."""
    from .convert.common import MAPPED, release_tensor

    pos = {g["group"]: 0 for g in plan}
    for name in names:
        osd = load_torch(tagdir / name, opts)[OSD]
        MAPPED.refresh()
        for g in plan:
            i = g["group"]
            piece = osd["single_partition_of_fp32_groups"][i]
            pad = list(osd["group_paddings"])[i]
            n = piece.numel()
            if n + pad != g["size"]:
                raise bad(name, f"group {i}: {n} + padding {pad} != {g['size']}")
            if not _equal_chunked(piece, g["fp32"], pos[i], n):
                raise bad(name, f"group {i}: fp32 partition differs from the source")
            release_tensor(piece, MAPPED.tensor_is_mapped(piece))
            for key, flat in g["moments"].items():
                m = osd["base_optimizer_state"]["state"][i][key]
                if m.numel() != g["size"] or not _equal_chunked(m[:n], flat, pos[i], n) \
                        or bool(m[n:].any()):
                    raise bad(name, f"group {i}: optimizer {key!r} differs from the source")
                release_tensor(m, MAPPED.tensor_is_mapped(m))
            pos[i] += n
        del osd
    for g in plan:
        if pos[g["group"]] != g["padded"]:
            raise bad(names[0], f"group {g['group']}: {pos[g['group']]} elements written, "
                                 f"{g['padded']} expected")


def _equal_chunked(piece: Any, flat: Any, pos: int, n: int) -> bool:
    """piece == the source's elements [pos, pos+n), compared VERIFY_CHUNK elements at a time
    (no partition-sized temporary); the compared pages of `piece` are dropped as it goes."""
    import torch

    from .convert.common import MAPPED, release_tensor

    mapped = MAPPED.tensor_is_mapped(piece)
    if piece.numel() != n:
        return False
    flat_piece = piece.reshape(-1)
    buf = torch.empty(min(n, VERIFY_CHUNK), dtype=flat.pieces[0].dtype)
    for a in range(0, n, VERIFY_CHUNK):
        b = min(n, a + VERIFY_CHUNK)
        if not torch.equal(flat_piece[a:b], flat.read(pos + a, pos + b, b - a, buf)):
            return False
        release_tensor(flat_piece[a:b], mapped)
    return True


def bad(name: str, message: str) -> ConvertError:
    return ConvertError(Code.CONVERT_VERIFY.finding(name, "reshard verification failed: "
                                                          + message))
