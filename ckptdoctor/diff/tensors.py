"""One tensor pair compared in chunks: equality, closeness, differences, norms, NaN / Inf."""

from __future__ import annotations

import math
from typing import Any

from .report import Section, TensorDiff
from .sides import Side

CHUNK_ELEMENTS = 1 << 16  # elements per comparison step (512 KiB per float64 temporary)


def compare_pair(section: Section, key: str, key_b: str, ea: Any, eb: Any, side_a: Side,
                 side_b: Side, rtol: float, atol: float) -> TensorDiff:
    """Stream one tensor pair in chunks: equality, closeness, max abs / rel difference,
    cosine, norms, NaN / Inf counts, all-zero. Only this pair is in memory."""
    import torch

    from ..convert.common import dtype_name, release_tensor

    d = TensorDiff(section, key, key_b, dtype_name(ea.dtype), dtype_name(eb.dtype),
                   tuple(ea.shape), tuple(eb.shape))
    if ea.read is not None and eb.read is not None and ea.numel == eb.numel:
        # both assemble ranges (ZeRO partitions): a piece of each at a time, never the whole
        n = ea.numel
        pieces = ((_ranged(ea, side_a, i, min(n, i + CHUNK_ELEMENTS)),
                   _ranged(eb, side_b, i, min(n, i + CHUNK_ELEMENTS)))
                  for i in range(0, n, CHUNK_ELEMENTS))
        _pair_stats(d, pieces, n, rtol, atol, torch)
        return d
    with side_a.lock:
        ta = ea.load()
    with side_b.lock:
        tb = eb.load()
    try:
        _stream_stats(d, ta, tb, rtol, atol, torch, ea.mapped, eb.mapped)
    finally:
        release_tensor(ta, ea.mapped)
        release_tensor(tb, eb.mapped)
    return d


def _stats_dtype(t: Any, torch: Any) -> Any:
    return torch.complex128 if t.is_complex() else torch.float64


def _ranged(e: Any, side: Side, a: int, b: int) -> Any:
    assert e.read is not None
    with side.lock:
        return e.read(a, b)


def _count(c: Any, torch: Any) -> tuple[int, int, int]:
    """(NaN, Inf, non-zero) in one chunk."""
    if c.dtype == torch.bool:
        c = c.to(torch.uint8)
    elif c.is_floating_point() and c.element_size() == 1:
        c = c.float()  # float8: torch has no isinf / count_nonzero kernels for it (exact)
    elif c.dtype in (torch.uint16, torch.uint32, torch.uint64):
        c = c.to(torch.int64)  # no count_nonzero kernel; zero stays zero
    if c.is_floating_point() or c.is_complex():
        return int(torch.isnan(c).sum()), int(torch.isinf(c).sum()), int(torch.count_nonzero(c))
    return 0, 0, int(torch.count_nonzero(c))


def _stream_stats(d: TensorDiff, ta: Any, tb: Any, rtol: float, atol: float, torch: Any,
                  mapped_a: bool = False, mapped_b: bool = False) -> None:
    """With `mapped_a` / `mapped_b` (the tensor lives in a private file mapping, see
    convert/common.MappedFiles), its pages are dropped after each chunk: the pair costs a few
    chunks of memory, not both tensors."""
    from ..convert.common import MAPPED

    fa, fb = ta.detach().reshape(-1), tb.detach().reshape(-1)
    # only a view of the mapped tensor itself (reshape of a non-contiguous one is a copy)
    drop_a = mapped_a and ta.is_contiguous() and fa.numel() > 0
    drop_b = mapped_b and tb.is_contiguous() and fb.numel() > 0

    def done(c: Any, drop: bool) -> None:
        if drop:
            MAPPED.release(c.data_ptr(), c.numel() * c.element_size())

    if fa.numel() == fb.numel():
        n = fa.numel()

        def pieces() -> Any:
            for i in range(0, n, CHUNK_ELEMENTS):
                ca, cb = fa[i:i + CHUNK_ELEMENTS], fb[i:i + CHUNK_ELEMENTS]
                yield ca, cb  # compared before the generator resumes: then dropped
                done(ca, drop_a)
                done(cb, drop_b)

        _pair_stats(d, pieces(), n, rtol, atol, torch)
        return
    d.equal = d.close = False
    nz_a = nz_b = 0
    for i in range(0, fa.numel(), CHUNK_ELEMENTS):
        nan, inf, nz = _count(fa[i:i + CHUNK_ELEMENTS], torch)
        done(fa[i:i + CHUNK_ELEMENTS], drop_a)
        d.nan_a, d.inf_a, nz_a = d.nan_a + nan, d.inf_a + inf, nz_a + nz
    for i in range(0, fb.numel(), CHUNK_ELEMENTS):
        nan, inf, nz = _count(fb[i:i + CHUNK_ELEMENTS], torch)
        done(fb[i:i + CHUNK_ELEMENTS], drop_b)
        d.nan_b, d.inf_b, nz_b = d.nan_b + nan, d.inf_b + inf, nz_b + nz
    d.zero_a, d.zero_b = fa.numel() > 0 and nz_a == 0, fb.numel() > 0 and nz_b == 0
    if fa.numel() == 1:
        d.scalar_a = _scalar(fa)
    if fb.numel() == 1:
        d.scalar_b = _scalar(fb)
    d.norm_a, d.norm_b = _norm(fa, torch), _norm(fb, torch)


def _pair_stats(d: TensorDiff, pieces: Any, n: int, rtol: float, atol: float,
                torch: Any) -> None:
    """Statistics of a pair of equal size, from its (A chunk, B chunk) pieces in order."""
    same_layout = d.shape_a == d.shape_b
    d.equal = same_layout and d.dtype_a == d.dtype_b
    d.close = same_layout
    sums = {"dot": 0.0, "aa": 0.0, "bb": 0.0, "max_abs": 0.0, "max_rel": 0.0}
    nz_a = nz_b = 0
    for ca, cb in pieces:
        nan, inf, nz = _count(ca, torch)
        d.nan_a, d.inf_a, nz_a = d.nan_a + nan, d.inf_a + inf, nz_a + nz
        nan, inf, nz = _count(cb, torch)
        d.nan_b, d.inf_b, nz_b = d.nan_b + nan, d.inf_b + inf, nz_b + nz
        if n == 1:
            d.scalar_a, d.scalar_b = _scalar(ca), _scalar(cb)
        if d.equal and not torch.equal(_bits(ca, torch), _bits(cb, torch)):
            d.equal = False
        a = ca.to(_stats_dtype(ca, torch)) if ca.dtype != torch.bool else ca.double()
        b = cb.to(_stats_dtype(cb, torch)) if cb.dtype != torch.bool else cb.double()
        if a.is_complex() or b.is_complex():
            a, b = torch.view_as_real(a.to(torch.complex128)).reshape(-1), \
                torch.view_as_real(b.to(torch.complex128)).reshape(-1)
        finite = torch.isfinite(a) & torch.isfinite(b)
        both_nan = torch.isnan(a) & torch.isnan(b)
        same_inf = torch.isinf(a) & (a == b)
        if d.close and not bool((finite | both_nan | same_inf).all()):
            d.close = False
        af, bf = a[finite], b[finite]
        diff = (af - bf).abs()
        if diff.numel():
            sums["max_abs"] = max(sums["max_abs"], float(diff.max()))
            denom = torch.maximum(af.abs(), bf.abs())
            rel = torch.where(denom > 0, diff / denom.clamp_min(1e-300), torch.zeros_like(diff))
            sums["max_rel"] = max(sums["max_rel"], float(rel.max()))
            if d.close and not bool((diff <= atol + rtol * bf.abs()).all()):
                d.close = False
        sums["dot"] += float((af * bf).sum())
        sums["aa"] += float((af * af).sum())
        sums["bb"] += float((bf * bf).sum())
    d.zero_a, d.zero_b = n > 0 and nz_a == 0, n > 0 and nz_b == 0
    d.max_abs, d.max_rel = sums["max_abs"], sums["max_rel"]
    d.norm_a, d.norm_b = math.sqrt(sums["aa"]), math.sqrt(sums["bb"])
    if d.norm_a > 0 and d.norm_b > 0:
        d.cosine = max(-1.0, min(1.0, sums["dot"] / (d.norm_a * d.norm_b)))
    elif d.norm_a == 0 and d.norm_b == 0:
        d.cosine = None
    if d.equal:
        d.close = True


def _bits(c: Any, torch: Any) -> Any:
    return c.contiguous().view(torch.uint8) if c.numel() and c.dtype != torch.bool else c


def _scalar(flat: Any) -> float | None:
    try:
        v = flat[0].item()
    except (RuntimeError, ValueError):
        return None
    return float(v.real if isinstance(v, complex) else v)


def _norm(flat: Any, torch: Any) -> float:
    total = 0.0
    for i in range(0, flat.numel(), CHUNK_ELEMENTS):
        c = flat[i:i + CHUNK_ELEMENTS].to(torch.float64)
        c = c[torch.isfinite(c)]
        total += float((c * c).sum())
    return math.sqrt(total)
