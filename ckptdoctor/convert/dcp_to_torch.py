"""torch.distributed.checkpoint directory -> one consolidated torch.save file.

Unlike `torch.distributed.checkpoint.format_utils.dcp_to_torch_save` (which loads the whole
state into memory and unpickles BytesIO items with weights_only=False), tensors are read one
item at a time from their shard and streamed into the output; BytesIO items go through the
loader chain, so a code-executing pickle in one is refused. The nesting comes back from
ckptdoctor's `ckptdoctor.tree.json` when this DCP was written by ckptdoctor (exact: int keys,
tuples, empty dicts), else from DCP's own planner_data (as DCP would rebuild it).
`params.json` next to the checkpoint is carried along."""

from __future__ import annotations

import functools
from pathlib import Path

from .common import ConvertResult, Options, TensorEntry, target_dtype
from .dcp_read import DcpCheckpoint, dim0_tiling
from .torch_emit import emit
from .torch_writer import TensorRef, refs_for_tensors

OPTIONS = {"dtype", "drop_non_tensors"}  # convert() options it honours


def source(src: Path, opts: Options, tensors_only: bool = False
           ) -> tuple[DcpCheckpoint, dict]:
    root = src.parent if src.name == ".metadata" else src
    ckpt = DcpCheckpoint(root, opts)
    values: dict = {}
    for fqn, meta in ckpt.tensors.items():
        tiled = not isinstance(dim0_tiling(meta), str)  # else read whole (tensor parallel)
        entry = TensorEntry(fqn, meta.dtype, meta.shape, functools.partial(ckpt.load_tensor, fqn),
                            str(root), raw=functools.partial(ckpt.raw_range, fqn),
                            read=functools.partial(ckpt.read_range, fqn) if tiled else None)
        values[fqn] = entry
    for fqn in ckpt.bytes_items:
        if not tensors_only:
            values[fqn] = ckpt.load_bytes(fqn)
    return ckpt, values


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    ckpt, values = source(src, opts, tensors_only=opts.drop_non_tensors)
    try:
        leaves = {k: TensorRef(v, target_dtype(v.dtype, opts.dtype))
                  if isinstance(v, TensorEntry) else refs_for_tensors(v, k)
                  for k, v in values.items()}
        result.non_tensors = sorted(ckpt.bytes_items)
        if opts.drop_non_tensors and ckpt.bytes_items:
            from ..codes import Code

            result.findings.append(Code.CONVERT_NON_TENSOR.finding(
                str(src), f"{len(ckpt.bytes_items)} non-tensor item(s) dropped "
                          "(--drop-non-tensors)", keys=sorted(ckpt.bytes_items)))
        tree, _how = ckpt.tree(leaves)
        emit(dst, opts, result, tree, "model.pt", ckpt.root, sidecars=("params.json",))
    finally:
        ckpt.close()
