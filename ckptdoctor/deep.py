"""`validate --deep`: checks that read every byte. Tensors are visited one at a time from mmap,
so memory stays bounded by the largest tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .codes import Code
from .formats.torch_zip import check_crc
from .model import Finding, Report, Severity

Progress = Callable[[str, int], None]


def deep_checks(base: Path, report: Report, progress: Progress | None = None) -> list[Finding]:
    out: list[Finding] = []
    weights: list[tuple[str, tuple[int, ...]]] = []
    optimizers: list[tuple[str, Any]] = []
    for f in report.files:
        if any(x.severity is Severity.ERROR for x in f.findings):
            continue  # broken or dangerous: never loaded
        path = base / f.path if f.path and (base / f.path).exists() else base
        if f.format == "torch-zip":
            out.extend(check_crc(path, f.path))
        if f.format == "safetensors":
            out.extend(_nonfinite_safetensors(path, f.path, weights, progress))
        elif f.format in ("torch-zip", "torch-legacy"):
            obj = _load(path, f)
            if obj is None:
                continue
            out.extend(_nonfinite_tree(obj, f.path, progress))
            if isinstance(obj, dict) and "state" in obj and "param_groups" in obj:
                optimizers.append((f.path, obj))
    for rel, opt in optimizers:
        out.extend(_optimizer_shapes(rel, opt, weights))
    return out


def _load(path: Path, info) -> Any:
    from .loaders import LoadError, load_with_chain

    try:
        return load_with_chain(path, static=info, rel=info.path).obj
    except LoadError:
        return None


def _nonfinite(t: Any) -> int:
    import torch

    if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
        return 0
    return int((~torch.isfinite(t)).sum())


def _nonfinite_safetensors(path: Path, rel: str, weights: list, progress: Progress | None
                           ) -> list[Finding]:
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():
            t = fh.get_tensor(name)
            weights.append((name, tuple(t.shape)))
            bad = _nonfinite(t)
            if progress:
                progress(rel, t.numel() * t.element_size())
            if bad:
                out.append(Code.NONFINITE.finding(rel, f"{name}: {bad} NaN/Inf value(s)",
                                                  tensor=name, count=bad))
    return out


def _walk(obj: Any, prefix: str = "", depth: int = 0):
    if depth > 50:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i), depth + 1)
    else:
        yield prefix, obj


def _nonfinite_tree(obj: Any, rel: str, progress: Progress | None) -> list[Finding]:
    out = []
    for name, v in _walk(obj):
        bad = _nonfinite(v)
        if progress and hasattr(v, "element_size"):
            progress(rel, v.numel() * v.element_size())
        if bad:
            out.append(Code.NONFINITE.finding(rel, f"{name}: {bad} NaN/Inf value(s)",
                                              tensor=name, count=bad))
    return out


def _optimizer_shapes(rel: str, opt: dict, weights: list[tuple[str, tuple[int, ...]]]
                      ) -> list[Finding]:
    """Per parameter, every state tensor (exp_avg, exp_avg_sq, ...) must have one shape; when
    the checkpoint's weights line up one-to-one with the optimizer's parameters, that shape
    must be the parameter's."""
    import torch

    out = []
    order = [p for g in opt.get("param_groups", []) for p in g.get("params", [])]
    shapes: dict[Any, tuple[int, ...]] = {}
    for pid, st in opt.get("state", {}).items():
        seen = {tuple(v.shape) for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(seen) > 1:
            out.append(Code.OPTIM_SHAPE.finding(
                rel, f"parameter {pid}: optimizer states disagree on shape: {sorted(seen)}"))
        elif seen:
            shapes[pid] = seen.pop()
    if weights and len(weights) == len(order) and shapes:
        for (name, wshape), pid in zip(weights, order):
            if pid in shapes and shapes[pid] != wshape:
                out.append(Code.OPTIM_SHAPE.finding(
                    rel, f"parameter {pid} ({name}): optimizer state {list(shapes[pid])} vs "
                         f"weight {list(wshape)}"))
    return out
