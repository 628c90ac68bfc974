"""safetensors (one file, shards + index, or a directory such as a Trainer `checkpoint-500/`)
-> safetensors: resharded (--max-shard-size), cast (--dtype), renamed (--strip-prefix /
--add-prefix), one tensor at a time.

Each tensor's bytes are read with pread straight from the source file (or cast 16 MiB at a
time). Aliases recorded in the source's `__metadata__` (`{"lm_head.weight":
"model.embed_tokens.weight"}`) stay aliases: the alias names the same entry, and the shared
safetensors side stores it once again and records it in the output's metadata. A
`<stem>.extra.json` beside the source comes along. The model directory's config and
tokenizer files are carried (from the checkpoint or its run directory)."""

from __future__ import annotations

from pathlib import Path

from .carry import is_training_dir
from .common import ConvertResult, Options, fail
from .sources import safetensors_files, source_dir
from .st_emit import Leaf, base_name, emit, read_extras
from .st_io import SafetensorsFile

OPTIONS = {"dtype", "max_shard_size", "strip_prefix", "add_prefix", "drop_non_tensors"}


def source_leaves(files: list[SafetensorsFile]) -> tuple[list[Leaf], dict[str, str]]:
    """One Leaf per stored tensor and per recorded alias (same identity as its target)."""
    leaves: list[Leaf] = []
    by_name: dict[str, Leaf] = {}
    aliases: dict[str, str] = {}
    for f in files:
        for name in f.names():
            if name in by_name:
                raise fail(f.path, f"{name} appears in more than one shard")
            leaf = Leaf(name, f.entry(name), ("st", str(f.path), name))
            by_name[name] = leaf
            leaves.append(leaf)
        aliases.update({k: v for k, v in f.metadata.items()
                        if k != "format" and isinstance(v, str)})
    for alias, kept in aliases.items():
        if alias not in by_name and kept in by_name:
            target = by_name[kept]
            leaves.append(Leaf(alias, target.entry, target.identity))
    return leaves, aliases


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    paths = safetensors_files(src)
    files = [SafetensorsFile(p) for p in paths]
    try:
        leaves, _ = source_leaves(files)
        stem = paths[0].name.split(".")[0].split("-0")[0]
        extra = paths[0].parent / f"{stem}.extra.json"
        values = []
        if extra.is_file():
            values = [Leaf(k, value=v) for k, v in read_extras(extra).items()]
        emit(src, dst, opts, result, leaves + values, source_dir(src), base_name(paths),
             extra_source=paths[0].name, expect_config=is_training_dir(source_dir(src)))
    finally:
        for f in files:
            f.close()
