"""Megatron-LM: `<save>/latest_checkpointed_iteration.txt` (an int or `release`, written after
the save completes) + `iter_<7 digits>/`, either legacy `torch`
(`mp_rank_<tp:02d>[_<pp:03d>]/model_optim_rng.pt`) or `torch_dist` (`metadata.json`, written
last, + DCP files).

Without the tracker Megatron logs "will start from random" and trains from scratch, silently;
an iter dir with `.metadata` but no `metadata.json` is misdetected as `torch_dcp`."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo
from ..pickles.scan import lookup, top_keys
from .base import (
    DCP_CONSUMER,
    NUMPY_RNG,
    Consumer,
    DirView,
    Evidence,
    LayoutBase,
    attr,
    check_dcp,
    dcp_details,
    is_dcp,
    join,
    missing,
    numbered,
    plain,
    top_dirs,
    top_files,
)

TRACKER = "latest_checkpointed_iteration.txt"
ITER_RE = r"iter_(\d{7})"
MP_RE = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?")
MODEL = "model_optim_rng.pt"
# megatron/core/safe_globals.py SAFE_GLOBALS, registered at import on torch >= 2.6
SAFE_GLOBALS = NUMPY_RNG | {
    "types.SimpleNamespace", "pathlib.PosixPath", "argparse.Namespace",
    "megatron.core.transformer.enums.AttnBackend", "megatron.core.transformer.enums.CudaGraphScope",
    "megatron.core.enums.ModelType", "megatron.core.optimizer.optimizer_config.OptimizerConfig",
    "megatron.core.rerun_state_machine.RerunDiagnostic",
    "megatron.core.rerun_state_machine.RerunMode", "megatron.core.rerun_state_machine.RerunState",
    "_io.BytesIO", "signal.Signals", "torch._C.Generator"}
LOAD = Consumer("weights_only", SAFE_GLOBALS,
                who="Megatron-LM load_checkpoint (megatron.core.safe_globals)")


def iterations(d: DirView) -> dict[int, str]:
    return dict(sorted(numbered(top_dirs(d), ITER_RE).items()))


def iter_format(d: DirView, sub: str) -> str | None:
    if any(MP_RE.fullmatch(s) for s in top_dirs(d, sub)):
        return "torch"
    if d.has(join(sub, "metadata.json")) or is_dcp(d, sub):
        return "torch_dist"
    return None


def iter_dirs(d: DirView) -> list[str]:
    return [s for s in [*iterations(d).values(), "release"] if iter_format(d, s)]


def saved(args: Any, key: str) -> int:
    """An int the run's argparse.Namespace recorded (0 when absent)."""
    v = plain(attr(args, key))
    return v if isinstance(v, int) else 0


def check_iter(d: DirView, sub: str) -> list[Finding]:
    """torch: every (tp, pp) rank dir holds model_optim_rng.pt (CK401), rank 0 has rng and
    optimizer state; torch_dist: metadata.json (CK401) + DCP completeness."""
    if iter_format(d, sub) == "torch_dist":
        out = check_dcp(d, sub)
        if not d.has(join(sub, "metadata.json")):
            out.append(missing(d, join(sub, "metadata.json"), "torch_dist writes it last, so "
                               "the save did not finish; Megatron also misdetects the dir as "
                               "torch_dcp"))
        return out
    ranks = {s: m for s in top_dirs(d, sub) if (m := MP_RE.fullmatch(s))}
    first = join(sub, min(ranks), MODEL)
    root = d.pickle_root(first) if d.has(first) else None
    args = lookup(root, "args")  # the saved sizes, else what the dir names show
    tp = max([int(m.group(1)) + 1 for m in ranks.values()]
             + [saved(args, "tensor_model_parallel_size")])
    pps = [int(m.group(2)) + 1 for m in ranks.values() if m.group(2)]
    pp = max(pps + [saved(args, "pipeline_model_parallel_size")]) if pps else 0
    out = []
    for t in range(tp):
        for p in range(pp) if pp else [None]:
            name = f"mp_rank_{t:02d}" + (f"_{p:03d}" if p is not None else "")
            if not any(s == name or s.startswith(name + "_") for s in ranks):
                out.append(missing(d, join(sub, name), f"tensor/pipeline rank dir {name} is "
                                   "missing: that rank cannot load its shard"))
    for s in sorted(ranks):
        if MODEL not in top_files(d, join(sub, s)):
            out.append(missing(d, join(sub, s, MODEL), "written by every model-parallel rank"))
    keys = top_keys(root)
    if keys and "rng_state" not in keys:
        out.append(Code.RNG_RANK_MISSING.finding(
            d.outer(first), "no rng_state: Megatron exits with 'Unable to load rng state' "
                            "unless run with --no-load-rng"))
    if keys and "optimizer" not in keys:
        out.append(Code.MODEL_ONLY.finding(
            d.outer(first), "no optimizer state: resume exits with 'Unable to load optimizer' "
                            "unless run with --no-load-optim (saved with --no-save-optim?)"))
    return out


def iter_details(d: DirView, sub: str) -> dict[str, Any]:
    fmt = iter_format(d, sub)
    out: dict[str, Any] = {"format": fmt}
    if fmt == "torch_dist":
        meta = d.read_json(join(sub, "metadata.json"))
        out.update(dcp_details(d, sub), metadata=meta if isinstance(meta, dict) else None)
        return out
    ranks = [m for s in top_dirs(d, sub) if (m := MP_RE.fullmatch(s))]
    out["tensor_parallel"] = len({m.group(1) for m in ranks})
    out["pipeline_parallel"] = len({m.group(2) for m in ranks if m.group(2)}) or 1
    first = join(sub, min(m.group(0) for m in ranks), MODEL)
    root = d.pickle_root(first) if d.has(first) else None
    args = lookup(root, "args")
    out.update(iteration=plain(lookup(root, "iteration")),
               checkpoint_version=plain(lookup(root, "checkpoint_version")),
               world_size=plain(attr(args, "world_size")))
    return out


class Megatron(LayoutBase):
    name = "megatron"
    framework = "megatron"  # whose resume (and version) the verdict models

    def is_iter(self, d: DirView) -> bool:
        return bool(re.fullmatch(ITER_RE, d.root.name) or d.root.name == "release") and bool(
            iter_format(d, ""))

    def match(self, d: DirView) -> bool:
        return d.has(TRACKER) or bool(iter_dirs(d)) or self.is_iter(d)

    def describe(self, d: DirView) -> LayoutInfo:
        if self.is_iter(d):
            m = re.fullmatch(ITER_RE, d.root.name)
            details: dict[str, Any] = {k: v for k, v in iter_details(d, "").items()
                                       if v is not None}
            return LayoutInfo(self.name, d.rel, int(m.group(1)) if m else None, details)
        tracked = d.read_text(TRACKER) if d.has(TRACKER) else None
        sub = "release" if tracked == "release" else (
            f"iter_{int(tracked):07d}" if tracked and tracked.isdigit() else None)
        step = int(tracked) if tracked and tracked.isdigit() else max(iterations(d), default=None)
        details = {"tracker": tracked, "iterations": list(iterations(d)),
                   "release": tracked == "release"}
        if sub and iter_format(d, sub):
            details.update(iter_details(d, sub))
        return LayoutInfo(self.name, d.rel, step, {k: v for k, v in details.items()
                                                   if v is not None})

    def checks(self, d: DirView) -> list[Finding]:
        if self.is_iter(d):
            return check_iter(d, "")
        out = self.check_tracker(d)
        for sub in iter_dirs(d):
            out += check_iter(d, sub)
        return out

    def check_tracker(self, d: DirView) -> list[Finding]:
        """The tracker exists, holds an int or 'release', and names an existing dir (CK413)."""
        hint = "write the iteration to resume from into " + TRACKER
        if not d.has(TRACKER):
            return [Code.TRACKER_MISSING.finding(
                d.outer(TRACKER), f"{TRACKER} is missing: Megatron logs 'will start from "
                "random' and trains from scratch, silently", hint=hint)]
        text = d.read_text(TRACKER)
        if not text:
            return []  # zero bytes: CK003
        if text != "release" and not text.isdigit():
            return [Code.TRACKER_MISSING.finding(
                d.outer(TRACKER), f"{TRACKER} holds {text[:40]!r}, not an iteration or "
                "'release': Megatron exits", hint=hint)]
        sub = "release" if text == "release" else f"iter_{int(text):07d}"
        if not iter_format(d, sub):
            return [Code.TRACKER_MISSING.finding(
                d.outer(TRACKER), f"{TRACKER} names {sub}, which "
                + ("holds no checkpoint" if d.has(sub) else "does not exist"),
                hint=hint + f" (present: {', '.join(iter_dirs(d)) or 'none'})")]
        return []

    def consumer(self, d: DirView, rel: str) -> Consumer:
        return LOAD if rel.endswith(".pt") else DCP_CONSUMER

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """Megatron-LM saves `args` (its Namespace) next to iteration/version keys."""
        if keys and "args" in keys and keys & {"checkpoint_version", "iteration",
                                               "opt_param_scheduler"}:
            return Evidence.CONTENT
        if base in ("model_optim_rng.pt", "distrib_optim.pt", "common.pt"):
            return Evidence.NAME
        return None

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        if not (fnmatch(base, "model_optim_rng*.pt") or "megatron" in lay):
            return None
        return ("Megatron-LM training state (rng_state[i]['np_rng_state'] numpy arrays, the "
                "argparse.Namespace `args`, enums)",
                "Megatron-LM registers megatron/core/safe_globals.py on torch >= 2.6 (Sep 2025 "
                "and later); older releases loaded with weights_only=False")
