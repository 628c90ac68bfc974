"""Prove a rewritten file before it replaces the original.

1. its pickle names no global outside the written allow-list (none at all, usually), by
   torch's own `get_unsafe_globals_in_checkpoint` and by ckptdoctor's static scan (which also
   sees the BUILD-time types torch's helper misses);
2. it loads with plain `torch.load(weights_only=True)`, with nothing registered, or with
   exactly the written allow-list when objects were kept;
3. every tensor is bit-identical to the original's (same type, dtype, shape, stride, bytes),
   every other value equals the converted original (types included). Tensors are compared
   4 MiB at a time; pages of the original's and the new file's mappings are dropped
   after each piece (convert/common.MappedFiles), so the check holds about two pieces of
   tensor data in memory, not two files;
4. every RNG state draws the identical stream from both: numpy (`np.random.set_state`, 1000
   uniforms + normals, so the cached Gaussian counts), Python (`random.setstate`), torch
   (`Generator.set_state`).
Any failure raises VerifyError and the original stays."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..convert.common import MappedFiles
from ..standins import StandIn
from .rulebase import Kept, name_of, render_path
from .stream_save import CHUNK
from .transcode import load_registered, standin_entries, via_reduce
from .walk import Converter, floats_equal

DRAWS = 1000


class VerifyError(Exception):
    pass


# --- values --------------------------------------------------------------------------------------
def tensors_identical(a: Any, b: Any, pages: MappedFiles | None = None) -> str:
    """'' when a and b are the same tensor bit for bit, else what differs. Contiguous tensors
    are compared in CHUNK-byte pieces; with `pages`, the pieces of tensors that live in one
    of its file mappings are dropped from memory once compared."""
    import torch

    if type(a) is not type(b):
        return f"type {type(a).__name__} != {type(b).__name__}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    if a.requires_grad != b.requires_grad:
        return "requires_grad differs"
    if a.is_meta or b.is_meta or a.numel() == 0:
        return "" if a.is_meta == b.is_meta else "meta tensor differs"
    if a.layout != torch.strided or a.is_quantized:
        return "" if torch.equal(a, b) else "values differ"
    if a.stride() != b.stride():
        return f"stride {a.stride()} != {b.stride()}"
    try:
        ab = a.detach().contiguous().reshape(-1).view(torch.uint8)
        bb = b.detach().contiguous().reshape(-1).view(torch.uint8)
        if a.is_contiguous() and b.is_contiguous():  # views of the tensors themselves
            return _bytes_identical(ab, bb, pages)
    except RuntimeError:
        same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                    and torch.equal(a.nan_to_num(), b.nan_to_num()))
        return "" if same else "values differ"
    return "" if torch.equal(ab, bb) else "bytes differ"


def _bytes_identical(ab: Any, bb: Any, pages: MappedFiles | None) -> str:
    import torch

    if ab.numel() != bb.numel():
        return "bytes differ"
    mapped = [pages is not None and pages.tensor_is_mapped(t) for t in (ab, bb)]
    for i in range(0, ab.numel(), CHUNK):
        n = min(CHUNK, ab.numel() - i)
        same = torch.equal(ab[i:i + n], bb[i:i + n])
        for t, m in zip((ab, bb), mapped, strict=True):
            if m and pages is not None:
                pages.release(t.data_ptr() + i, n)
        if not same:
            return "bytes differ"
    return ""


def compare(new: Any, exp: Any, path: tuple = (), seen: set | None = None,
            pages: MappedFiles | None = None) -> str:
    """'' when `new` (loaded from the rewritten file) equals `exp` (the converted original).
    `pages`: the file mappings whose tensor pages may be dropped once compared."""
    import torch

    seen = set() if seen is None else seen
    where = render_path(path)
    if isinstance(exp, torch.Tensor):
        if not isinstance(new, torch.Tensor):
            return f"{where}: expected a tensor, got {type(new).__name__}"
        diff = tensors_identical(exp, new, pages)
        return f"{where}: tensor {diff}" if diff else ""
    if isinstance(exp, Kept):
        if not isinstance(new, StandIn) or name_of(new) != exp.name:
            return f"{where}: expected kept {exp.name}, got {type(new).__name__}"
        if via_reduce(new) != exp.via_reduce:
            return f"{where}: {exp.name} rebuilt differently (REDUCE vs NEWOBJ)"
        return (compare(tuple(new.args), tuple(exp.args), path + ("<args>",), seen, pages)
                or compare(new.state, exp.state, path, seen, pages))
    if (id(new), id(exp)) in seen:
        return ""
    if type(new) is not type(exp):
        return f"{where}: type {type(new).__name__} != {type(exp).__name__}"
    if isinstance(exp, dict):
        seen.add((id(new), id(exp)))
        if list(new.keys()) != list(exp.keys()):
            return f"{where}: keys differ"
        for k in exp:
            diff = compare(new[k], exp[k], path + (k,), seen, pages)
            if diff:
                return diff
        extra_new, extra_exp = getattr(new, "__dict__", {}), getattr(exp, "__dict__", {})
        if extra_new or extra_exp:
            return compare(dict(extra_new), dict(extra_exp), path + ("__dict__",), seen, pages)
        return ""
    if isinstance(exp, (list, tuple)):
        seen.add((id(new), id(exp)))
        if len(new) != len(exp):
            return f"{where}: length {len(new)} != {len(exp)}"
        for i, (a, b) in enumerate(zip(new, exp, strict=True)):
            diff = compare(a, b, path + (i,), seen, pages)
            if diff:
                return diff
        return ""
    if isinstance(exp, float):
        return "" if floats_equal(new, exp) else f"{where}: {new!r} != {exp!r}"
    if isinstance(exp, complex):
        same = floats_equal(new.real, exp.real) and floats_equal(new.imag, exp.imag)
        return "" if same else f"{where}: {new!r} != {exp!r}"
    try:
        same = bool(new == exp)
    except Exception:  # odd __eq__
        same = False
    return "" if same else f"{where}: {_short(new)} != {_short(exp)}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 80 else text[:77] + "..."


def value_at(obj: Any, path: tuple) -> Any:
    cur = obj
    for k in path:
        if isinstance(cur, (Kept, StandIn)):
            cur = cur.state
        cur = cur[k]
    return cur


# --- RNG draws -----------------------------------------------------------------------------------
def numpy_draws(state: Any) -> tuple:
    import numpy as np

    saved = np.random.get_state()
    try:
        np.random.set_state(state)
        return (np.random.random_sample(DRAWS), np.random.standard_normal(DRAWS),
                np.random.randint(0, 2**31 - 1, DRAWS))
    finally:
        np.random.set_state(saved)


def python_draws(state: Any) -> list[float]:
    r = random.Random()
    r.setstate(state)
    return [r.random() for _ in range(DRAWS)] + [r.gauss(0, 1) for _ in range(10)]


def torch_draws(state: Any) -> Any:
    import torch

    g = torch.Generator()
    g.set_state(state.clone().contiguous())
    return torch.rand(DRAWS, generator=g)


def check_rng(new_obj: Any, conv: Converter) -> list[str]:
    """Draw from every recorded RNG state in the original and in the new file."""
    import numpy as np
    import torch

    checks = []
    for site in conv.rng:
        where = render_path(site.path)
        try:
            new = value_at(new_obj, site.path)
        except (KeyError, IndexError, TypeError) as exc:
            raise VerifyError(f"{where}: RNG state missing from the new file ({exc})") from exc
        draw = {"numpy": numpy_draws, "python": python_draws, "torch": torch_draws}[site.kind]
        try:
            a = draw(site.original)
        except Exception:  # looked like an RNG state but is not one (a buffer
            continue  # of the same size): the value comparison above already covers it
        try:
            b = draw(new)
        except Exception as exc:  # the original restores, the new one does not
            raise VerifyError(f"{where}: {site.kind} RNG state cannot be restored: {exc}") from exc
        if site.kind == "numpy":
            same = all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        elif site.kind == "python":
            same = a == b
        else:
            same = torch.equal(a.view(torch.int32), b.view(torch.int32))
        if not same:
            raise VerifyError(f"{where}: {site.kind} RNG draws differ after restoring the state")
        checks.append(f"{site.kind} RNG at {where}: {DRAWS} draws identical")
    return checks


# --- files ---------------------------------------------------------------------------------------
def verify_torch_file(new_path: Path, expected: Any, conv: Converter, allowlist: list[str],
                      original: Path | None = None) -> list[str]:
    """Run every check on a rewritten torch file; return what was checked. `original`: the
    file `expected` was loaded from (mmap), whose compared pages may be dropped too."""
    import torch

    from ..formats import detect_file

    checks = []
    allowed = set(allowlist)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(new_path)))
    if not unsafe <= allowed:
        raise VerifyError("new file still references " + ", ".join(sorted(unsafe - allowed)))
    info = detect_file(new_path, new_path.name)
    errors = [f.message for f in info.findings if str(f.severity) == "error"]
    if errors:
        raise VerifyError("static scan of the new file: " + errors[0])
    if info.weights_only is None:
        raise VerifyError("new file is not a torch pickle")
    needs = set(info.weights_only.allowlist)
    if not needs <= allowed:
        raise VerifyError("new file needs " + ", ".join(sorted(needs - allowed))
                          + " to load with weights_only=True")
    checks.append("no globals outside torch's default allow-list" if not allowed else
                  "globals limited to the written allow-list: " + ", ".join(sorted(allowed)))
    entries = standin_entries(sorted(allowed), capture_types=False) if allowed else []
    try:
        new_obj = load_registered(new_path, entries, mmap=True)
    except Exception as exc:
        how = "with the allow-list" if allowed else "with no safe globals"
        raise VerifyError(f"torch.load(weights_only=True) {how} fails: {exc}"[:400]) from exc
    checks.append("torch.load(weights_only=True) loads it" + (
        " with exactly the written allow-list" if allowed else " with no safe globals"))
    pages = MappedFiles()  # both sides exist now: see MappedFiles on soundness
    for p in (new_path, original):
        if p is not None:
            pages.add(p)
    diff = compare(new_obj, expected, pages=pages)
    if diff:
        raise VerifyError(f"new file differs from the converted original: {diff}")
    checks.append("tensors bit-identical; other values equal the converted original")
    checks += check_rng(new_obj, conv)
    return checks


def verify_safetensors_file(new_path: Path, expected: dict) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(new_path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != "pt":
        raise VerifyError("safetensors metadata lacks format=pt")
    loaded = load_file(str(new_path))
    if sorted(loaded) != sorted(expected):
        raise VerifyError("safetensors file holds different tensor names")
    for k, t in expected.items():
        diff = tensors_identical(t.detach().contiguous(), loaded[k])
        if diff and not diff.startswith("type"):  # Parameter -> Tensor is expected
            raise VerifyError(f"{k}: tensor {diff}")
    return ["safetensors header has format=pt",
            f"{len(expected)} tensors bit-identical to the original"]


__all__ = ["VerifyError", "verify_torch_file", "verify_safetensors_file", "compare",
           "tensors_identical", "check_rng", "numpy_draws"]
