"""safetensors (single file, or shards + index, or a directory) -> one torch.save file that
loads with plain torch.load(weights_only=True).

Tensors stream from a private mapping of each file into the zip, one at a time. Aliases a
converter recorded in `__metadata__` (`{"lm_head.weight": "model.embed_tokens.weight"}`, as
ckptdoctor and HF's convert script write them) come back as the same tensor, so a tied state
dict round-trips; a `<stem>.extra.json` sidecar beside the source restores the non-tensor
entries ckptdoctor moved out."""

from __future__ import annotations

from pathlib import Path

from .common import ConvertResult, Options, fail, target_dtype
from .sources import safetensors_files, source_dir
from .st_emit import read_extras
from .st_io import SafetensorsFile
from .torch_emit import emit
from .torch_writer import TensorRef

# convert() options it honours
OPTIONS = {"dtype", "strip_prefix", "add_prefix", "drop_non_tensors"}


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    files = [SafetensorsFile(p) for p in safetensors_files(src)]
    tree: dict = {}
    refs: dict[str, TensorRef] = {}
    aliases: dict[str, str] = {}
    for f in files:
        for name in f.names():
            if name in refs:
                raise fail(f.path, f"{name} appears in more than one shard")
            entry = f.entry(name)
            refs[name] = tree[name] = TensorRef(entry, target_dtype(entry.dtype, opts.dtype))
        aliases.update({k: v for k, v in f.metadata.items() if k != "format"})
    for alias, kept in aliases.items():
        if alias not in refs and kept in refs:
            tree[alias] = refs[kept]
            result.aliases[alias] = kept
    stem = files[0].path.name.split(".")[0].split("-0")[0]
    extra = files[0].path.parent / f"{stem}.extra.json"
    if extra.is_file() and not opts.drop_non_tensors:
        for key, value in read_extras(extra).items():
            if key not in tree:
                tree[key] = value
                result.non_tensors.append(key)
        result.non_tensor_sidecar = str(extra)
    if opts.strip_prefix:
        p = opts.strip_prefix
        stripped = {k[len(p):]: v for k, v in tree.items()
                    if k.startswith(p) and len(k) > len(p)}
        result.skipped.extend(k for k in tree if not (k.startswith(p) and len(k) > len(p)))
        if not stripped:
            raise fail(src, f"no entry starts with --strip-prefix {p!r}")
        tree = stripped
    if opts.add_prefix:
        tree = {opts.add_prefix + k: v for k, v in tree.items()}
    emit(dst, opts, result, tree, "pytorch_model.bin", source_dir(src))
