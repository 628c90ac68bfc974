"""`ckptdoctor convert SRC DST --to safetensors|torch|dcp|safe`, as a library.

    from ckptdoctor.convert import convert
    result = convert("ckpt/", "out/", "safetensors", max_shard_size="5GB")

One module per (source kind, target) pair, registered in CONVERTERS below. Every pair:
  * reads pickles only through the loader chain (weights_only first, allow-listed stand-ins,
    --trust last and never with a code-executing global);
  * streams tensors one at a time from mmap (or one DCP / DeepSpeed item at a time) to the
    output, so peak RSS stays near the largest tensor, not the checkpoint;
  * writes into a temp file / directory beside DST and renames it into place only after the
    output has been re-read and compared bit for bit with the source (unless verify=False).

Failures raise ConvertError (`.finding` is CK705 CONVERT_FAILED or CK706 CONVERT_VERIFY;
`.findings` adds the causes). Nothing is left at DST then."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import (
    dcp_to_safetensors,
    dcp_to_torch,
    deepspeed_to_safetensors,
    deepspeed_to_torch,
    lightning_to_safetensors,
    safe_to_torch,
    safetensors_to_dcp,
    safetensors_to_safetensors,
    safetensors_to_torch,
    torch_to_dcp,
    torch_to_safe,
    torch_to_safetensors,
)
from .common import (
    DTYPE_CHOICES,
    TARGETS,
    ConvertError,
    ConvertResult,
    ConvertTarget,
    Options,
    Progress,
    Timer,
    fail,
    parse_size,
)
from .sources import detect

Runner = Callable[[Path, Path, Options, ConvertResult], None]

# (source kind, --to) -> the module that does it. Nothing else is dispatched.
CONVERTERS: dict[tuple[str, ConvertTarget], Runner] = {
    ("torch", ConvertTarget.SAFETENSORS): torch_to_safetensors.run,
    ("lightning", ConvertTarget.SAFETENSORS): lightning_to_safetensors.run,
    ("safetensors", ConvertTarget.TORCH): safetensors_to_torch.run,
    ("safetensors", ConvertTarget.SAFETENSORS): safetensors_to_safetensors.run,
    ("safetensors", ConvertTarget.DCP): safetensors_to_dcp.run,
    ("torch", ConvertTarget.DCP): torch_to_dcp.run,
    ("dcp", ConvertTarget.TORCH): dcp_to_torch.run,
    ("dcp", ConvertTarget.SAFETENSORS): dcp_to_safetensors.run,
    ("deepspeed", ConvertTarget.SAFETENSORS): deepspeed_to_safetensors.run,
    ("deepspeed", ConvertTarget.TORCH): deepspeed_to_torch.run,
    ("torch", ConvertTarget.SAFE): torch_to_safe.run,
    ("lightning", ConvertTarget.SAFE): torch_to_safe.run,
    ("safe", ConvertTarget.TORCH): safe_to_torch.run,
}
# A Lightning file is a torch file too: these pairs treat it as one.
_FALLBACK = {("lightning", ConvertTarget.DCP): ("torch", ConvertTarget.DCP)}


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str | ConvertTarget, *,
            max_shard_size: int | str | None = None, dtype: str = "keep", verify: bool = True,
            drop_non_tensors: bool = False, strip_prefix: str | None = None,
            allow: tuple[str, ...] | list[str] = (), trust: bool = False,
            progress: Progress | None = None, overwrite: bool = False,
            add_prefix: str | None = None, nest: str | None = None,
            params: str | os.PathLike | None = None,
            weights_only: bool = False) -> ConvertResult:
    """Convert SRC to DST in format `to`. Returns what was written; raises ConvertError."""
    timer = Timer()
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise fail(dst, f"--to {to!r}: choose one of {', '.join(TARGETS)}")
    to = ConvertTarget(to)
    if dtype not in DTYPE_CHOICES:
        raise fail(dst, f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    try:
        shard_bytes = parse_size(max_shard_size)
    except ValueError as exc:
        raise fail(dst, str(exc)) from None
    if src.resolve() == dst.resolve():
        raise fail(dst, "DST is SRC: conversions never write over their source")
    behind = None
    if weights_only:
        from .salvage import left_behind, weights_of

        weights, kind, taken = weights_of(src)
        _, behind = left_behind(src, taken)
        src = weights
    else:
        kind = detect(src)
    key = _FALLBACK.get((kind, to), (kind, to))
    runner = CONVERTERS.get(key)
    if runner is None:
        options = sorted(t for k, t in CONVERTERS if k == kind)
        raise fail(src, f"no conversion from {kind} to {to}"
                   + (f" (from {kind}: --to {' / '.join(options)})" if options else ""))
    honoured: set[str] = getattr(sys.modules[runner.__module__], "OPTIONS", set())
    asked = {"dtype": dtype != "keep", "max_shard_size": max_shard_size is not None,
             "strip_prefix": bool(strip_prefix), "drop_non_tensors": drop_non_tensors,
             "add_prefix": bool(add_prefix), "nest": bool(nest), "params": params is not None}
    unsupported = [k for k, v in asked.items() if v and k not in honoured]
    if unsupported:
        raise fail(dst, f"{kind} -> {to} does not take "
                        + ", ".join("--" + k.replace("_", "-") for k in unsupported)
                        + (" (--to safe is lossless: it keeps everything as it is)"
                           if ConvertTarget.SAFE in (kind, to) else ""))
    if params is not None and not Path(params).is_file():
        raise fail(params, f"--params {params}: no such file")
    opts = Options(to, shard_bytes, dtype, verify, drop_non_tensors, strip_prefix,
                   tuple(allow), trust, progress, overwrite, add_prefix or None, nest or None,
                   Path(params) if params is not None else None, weights_only)
    result = ConvertResult(str(src), str(dst), kind, to,
                           converter=runner.__module__.rpartition(".")[2])
    from . import resume_check
    from .staging import BEFORE_COMMIT

    token = BEFORE_COMMIT.set(resume_check.hook(src, kind, opts, result)
                              if resume_check.applies(kind, to, opts) else None)
    try:
        runner(src, dst, opts, result)
    except ConvertError as exc:
        raise _suggest_weights_only(src, exc, weights_only) from None
    finally:
        BEFORE_COMMIT.reset(token)
    if behind is not None:
        result.findings.append(behind)
    result.seconds = timer()
    return result


def _suggest_weights_only(src: Path, exc: ConvertError, weights_only: bool) -> ConvertError:
    """A training checkpoint that fails to convert while its saved weights are complete:
    say that --weights-only exports them."""
    if weights_only or not src.is_dir():
        return exc
    from .salvage import weights_of

    try:
        weights, _, _ = weights_of(src)
    except ConvertError:
        return exc
    from dataclasses import replace

    from ..model import Severity

    note = f" ({weights.name} is there: --weights-only exports it and lists the rest)"
    # the CLI prints the first error cause (else the CK705 itself): the note goes there
    i = next((i for i, f in enumerate(exc.findings) if i and f.severity is Severity.ERROR), 0)
    exc.findings[i] = replace(exc.findings[i], message=exc.findings[i].message + note)
    if i == 0:
        exc.finding = exc.findings[0]
    return exc


def render_result(result: ConvertResult) -> str:
    """Human summary (the CLI prints it; --json users take result.to_json())."""
    lines = [f"converted {result.src} ({result.source_format}) -> {result.dst} ({result.to}): "
             f"{result.tensors} tensors, {_human(result.bytes)}, {result.seconds:.1f}s, "
             + ("verified bit-identical" if result.verified else "NOT verified (--no-verify)")]
    for f in result.files:
        lines.append(f"  wrote {f}")
    for x in result.findings:
        lines.append(f"  {x.code} {x.severity}: {x.message}")
        if x.hint:
            lines.append(f"    hint: {x.hint}")
    return "\n".join(lines) + "\n"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


__all__ = ["convert", "render_result", "ConvertResult", "ConvertError", "ConvertTarget",
           "CONVERTERS", "detect"]
