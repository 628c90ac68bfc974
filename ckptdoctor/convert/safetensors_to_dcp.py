"""safetensors (one file, shards + index, or a model directory) -> torch.distributed.checkpoint,
with --nest KEY / --add-prefix for the consumer's layout (Lingua's init_ckpt_path loads
`{"model": model.state_dict()}`) and --params FILE written as params.json.

Tensors come from one private mapping per file and are written by DCP's own writer, as in
torch -> DCP (see torch_to_dcp.py): the planner receives each real tensor only when its item
is written. Aliases recorded in `__metadata__` come back as the same tensor, so both names
are in the checkpoint, as in the model's state_dict()."""

from __future__ import annotations

from pathlib import Path

from .common import ConvertResult, Options
from .safetensors_to_safetensors import source_leaves
from .sources import safetensors_files
from .st_emit import read_extras
from .st_io import SafetensorsFile
from .torch_to_dcp import write_dcp

OPTIONS = {"dtype", "add_prefix", "nest", "params"}


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    paths = safetensors_files(src)
    files = [SafetensorsFile(p) for p in paths]
    try:
        leaves, _ = source_leaves(files)
        loaded: dict[int, object] = {}
        state: dict = {}
        for leaf in leaves:  # an alias shares its target's entry: the same tensor object
            entry = leaf.entry
            assert entry is not None  # source_leaves: every leaf is a stored tensor
            key = id(entry)
            if key not in loaded:
                loaded[key] = entry.load()
            state[leaf.key] = loaded[key]
        stem = paths[0].name.split(".")[0].split("-0")[0]
        extra = paths[0].parent / f"{stem}.extra.json"
        if extra.is_file() and not opts.drop_non_tensors:
            for k, v in read_extras(extra).items():
                state.setdefault(k, v)
        write_dcp(src, dst, opts, result, state)
    finally:
        for f in files:
            f.close()
