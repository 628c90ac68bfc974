"""PyTorch Lightning `.ckpt` -> the model's state dict as safetensors.

Only `state_dict` becomes tensors (with --strip-prefix, e.g. `model.`, selecting and renaming
the wrapped module's keys). Lightning's small bookkeeping (epoch, global_step, versions,
hyper_parameters) goes to the `<stem>.extra.json` sidecar; training state that holds tensors
(optimizer_states, lr_schedulers, callbacks, loops) is left out and reported: `--to safe`
keeps the whole checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..codes import Code
from .common import ConvertResult, Options, fail, holds, is_tensor
from .loading import load_torch
from .sources import source_dir
from .st_emit import Leaf, emit
from .torch_to_safetensors import leaves_of

# the convert() options this pair honours
OPTIONS = {"dtype", "max_shard_size", "strip_prefix", "add_prefix", "drop_non_tensors"}


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    ckpt = load_torch(src, opts)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise fail(src, f"{src}: no `state_dict` in this Lightning checkpoint")
    leaves = leaves_of(ckpt["state_dict"], str(src))
    training, bookkeeping = [], []
    for key, value in ckpt.items():
        if key == "state_dict":
            continue
        if holds(value, is_tensor):
            training.append(key)
        else:
            bookkeeping.append(Leaf(str(key), value=value))
    if training:
        result.skipped.extend(training)
        result.findings.append(Code.CONVERT_SKIPPED.finding(
            str(src), "training state left out of the weights: " + ", ".join(training),
            hint=f"ckptdoctor convert {src} <dir> --to safe keeps the whole checkpoint"))
    emit(src, dst, opts, result, leaves, source_dir(src), "model", extra_source=src.name,
         more_values=bookkeeping)
