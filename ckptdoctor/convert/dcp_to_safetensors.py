"""torch.distributed.checkpoint directory (e.g. an FSDP SHARDED_STATE_DICT save) ->
consolidated safetensors, one tensor at a time (chunks of a sharded tensor are assembled).
Keys are DCP's flattened names (`model.layers.0.attn.wq.weight`); --strip-prefix model.
selects the model. BytesIO items (loaded through the chain) go to the JSON sidecar."""

from __future__ import annotations

from pathlib import Path

from .common import ConvertResult, Options, TensorEntry
from .dcp_to_torch import source
from .st_emit import Leaf, emit

# the convert() options this pair honours
OPTIONS = {"dtype", "max_shard_size", "strip_prefix", "add_prefix", "drop_non_tensors"}


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    ckpt, values = source(src, opts)
    try:
        leaves = [Leaf(k, v, None) if isinstance(v, TensorEntry) else Leaf(k, value=v)
                  for k, v in values.items()]
        emit(src, dst, opts, result, leaves, ckpt.root, "model", extra_source=ckpt.root.name)
    finally:
        ckpt.close()
