"""An equality oracle for tests that owes nothing to ckptdoctor.

Convert and repair tests used `ckptdoctor.convert.codec.deep_equal` to check their own output:
if that function said "equal" for everything, every round-trip test still passed. This module
compares what torch / safetensors / numpy themselves loaded, with torch.equal on the raw bytes
of each tensor (so NaN payloads, -0.0 and bf16 bit patterns count), and walks containers by
plain Python rules. It imports nothing from ckptdoctor."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def _type_name(x: Any) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}:{getattr(t, 'standin_name', '')}"


def differences(a: Any, b: Any, path: str = "<root>", depth: int = 0) -> list[str]:
    """Every place a and b differ (empty when equal)."""
    if depth > 100:
        return [f"{path}: nesting too deep to compare"]
    if _type_name(a) != _type_name(b):
        return [f"{path}: type {_type_name(a)} vs {_type_name(b)}"]
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return [f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        return [] if torch.equal(_tensor_bytes(a), _tensor_bytes(b)) else [f"{path}: values"]
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"]
        if a.dtype == object:
            return differences(a.tolist(), b.tolist(), path, depth + 1)
        return [] if a.tobytes() == b.tobytes() else [f"{path}: values"]
    if isinstance(a, np.generic):
        same = a.dtype == b.dtype and a.tobytes() == b.tobytes()
        return [] if same else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, float):
        same = (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
        return [] if same else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, (str, bytes, bytearray, int, complex, bool, type(None))):
        return [] if a == b else [f"{path}: {a!r} vs {b!r}"]
    out: list[str] = []
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)!r} vs {list(b)!r}"]
        for k in a:
            out += differences(a[k], b[k], f"{path}[{k!r}]", depth + 1)
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{path}[{i}]", depth + 1)
    elif isinstance(a, (set, frozenset)) and a != b:
        out.append(f"{path}: {a!r} vs {b!r}")
    if hasattr(a, "__dict__") and not isinstance(a, type):
        out += differences(dict(sorted(vars(a).items())), dict(sorted(vars(b).items())),
                           f"{path}.@attrs", depth + 1)
    elif not isinstance(a, (dict, list, tuple, set, frozenset)):
        try:
            if a != b:
                out.append(f"{path}: {a!r} vs {b!r}")
        except Exception:  # objects without a usable ==: fall back to their pickle recipe
            if repr(a) != repr(b):
                out.append(f"{path}: {a!r} vs {b!r}")
    return out


def assert_same(a: Any, b: Any) -> None:
    diff = differences(a, b)
    assert not diff, "differs: " + "; ".join(diff[:10])
