"""DeepSpeed ZeRO 1/2/3 checkpoint -> consolidated fp32 state dict as one torch.save file
(what zero_to_fp32.py writes as pytorch_model.bin), streamed one parameter at a time."""

from __future__ import annotations

from pathlib import Path

from .common import ConvertResult, Options, target_dtype
from .deepspeed_read import leaves
from .torch_emit import emit
from .torch_writer import TensorRef

OPTIONS = {"dtype", "drop_non_tensors"}  # convert() options it honours


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    ckpt, entries = leaves(src, opts)
    refs: dict[int, TensorRef] = {}
    tree = {}
    for name, entry in entries:
        if id(entry) not in refs:
            refs[id(entry)] = TensorRef(entry, target_dtype(entry.dtype, opts.dtype))
        tree[name] = refs[id(entry)]
    emit(dst, opts, result, tree, "pytorch_model.bin", Path(ckpt.tag))
