"""torch state dict(s) -> safetensors.

SRC: a `.bin`/`.pt`/`.pth` file (zip or legacy), a directory with `pytorch_model.bin` or
sharded `pytorch_model-0000i-of-0000N.bin` + `pytorch_model.bin.index.json`, or the index.
Every file is opened through the loader chain with mmap; nested dicts are flattened with
dots (DCP's naming), tied tensors are stored once, non-tensor entries go to
`<stem>.extra.json` (or are dropped with --drop-non-tensors)."""

from __future__ import annotations

from pathlib import Path

from .carry import is_training_dir
from .common import ConvertResult, Options, fail, tensor_entry
from .loading import load_torch
from .sources import flatten, source_dir, storage_identity, torch_files
from .st_emit import Leaf, base_name, emit

# the convert() options this pair honours
OPTIONS = {"dtype", "max_shard_size", "strip_prefix", "add_prefix", "drop_non_tensors"}


def leaves_of(obj, origin: str) -> list[Leaf]:
    import torch

    out = []
    for key, v in flatten(obj, origin):
        if isinstance(v, torch.Tensor):
            out.append(Leaf(key, tensor_entry(key, v, origin), storage_identity(v)))
        else:
            out.append(Leaf(key, value=v))
    return out


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    files = torch_files(src)
    leaves: list[Leaf] = []
    seen: set[str] = set()
    for f in files:
        obj = load_torch(f, opts)
        for leaf in leaves_of(obj, str(f)):
            if leaf.key in seen:
                raise fail(f, f"{leaf.key} appears in more than one shard")
            seen.add(leaf.key)
            leaves.append(leaf)
    emit(src, dst, opts, result, leaves, source_dir(src), base_name(files),
         extra_source=files[0].name, expect_config=is_training_dir(source_dir(src)))
