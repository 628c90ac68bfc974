"""DeepSpeed ZeRO 1/2/3 checkpoint (`latest` + `global_stepN/`, or the tag directory) ->
consolidated fp32 safetensors (or --dtype), one parameter gathered at a time.
See deepspeed_read.py for the merge; tied (`shared_params`) weights are stored once."""

from __future__ import annotations

from pathlib import Path

from .common import ConvertResult, Options
from .deepspeed_read import leaves
from .st_emit import Leaf, emit

# the convert() options this pair honours
OPTIONS = {"dtype", "max_shard_size", "strip_prefix", "add_prefix", "drop_non_tensors"}


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    ckpt, entries = leaves(src, opts)
    out = [Leaf(name, entry, ("deepspeed", id(entry))) for name, entry in entries]
    # config / tokenizer: from the tag directory's checkpoint directory or the run directory
    emit(src, dst, opts, result, out, Path(ckpt.tag), "model", origin=str(ckpt.tag),
         expect_config=True)
