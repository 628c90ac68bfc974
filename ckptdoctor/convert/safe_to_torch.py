"""ckptdoctor `safe` directory (tensors.safetensors + state.json + manifest.json) -> one
torch.save file equal to the checkpoint it came from: tensors bit-identical (ties kept,
Parameters and requires_grad restored), every other value rebuilt from state.json. The
manifest's sizes are always checked and, unless --no-verify, its sha256 too."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from .codec import SKIP, CodecError, decode
from .common import ConvertResult, Options, TensorEntry, fail
from .sources import SAFE_FORMAT
from .st_io import SafetensorsFile, sha256_file
from .torch_emit import emit
from .torch_to_safe import MANIFEST, STATE, TENSORS
from .torch_writer import TensorRef

OPTIONS: set[str] = set()  # convert() options it honours


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    import torch

    try:
        manifest = json.loads((src / MANIFEST).read_text("utf-8"))
        doc = json.loads((src / STATE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(src, f"{src}: unreadable safe directory: {exc}") from None
    if manifest.get("format") != SAFE_FORMAT or doc.get("format") != SAFE_FORMAT:
        raise fail(src, f"{src}: not a {SAFE_FORMAT} directory")
    for name, want in (manifest.get("files") or {}).items():
        p = src / name
        if not p.is_file() or os.path.getsize(p) != want.get("size"):
            raise fail(p, f"{name} is missing or its size differs from {MANIFEST}",
                       hint="the directory is incomplete or was modified")
        if opts.verify and sha256_file(p) != want.get("sha256"):
            raise fail(p, f"{name}: sha256 differs from {MANIFEST}",
                       hint="the file was modified or corrupted after it was written")
    st = SafetensorsFile(src / TENSORS)
    refs: dict[str, TensorRef] = {}

    def hook(d: dict) -> Any:
        if d.get("$t") != "tensor":
            return SKIP
        key = d["key"]
        if key not in refs:
            if key not in st.header:
                raise fail(src / TENSORS, f"{key} named by {STATE} is not in {TENSORS}")
            entry = st.entry(key)
            dtype = getattr(torch, d.get("dtype", ""), None)
            shape = tuple(d.get("shape", entry.shape))
            if isinstance(dtype, torch.dtype) and dtype != entry.dtype:  # stored as raw bytes
                entry = TensorEntry(key, dtype, shape,
                                    functools.partial(_reinterpret, entry, dtype, shape),
                                    entry.origin, entry.mapped)
            refs[key] = TensorRef(entry, parameter=bool(d.get("parameter")),
                                  requires_grad=bool(d.get("requires_grad")))
        return refs[key]

    try:
        tree = decode(doc["root"], hook)
    except (CodecError, KeyError, TypeError, ValueError) as exc:
        raise fail(src / STATE, f"{STATE} does not decode: {exc}") from None
    name = doc.get("source") or "checkpoint.pt"
    emit(dst, opts, result, tree, Path(name).name)


def _reinterpret(entry: TensorEntry, dtype: Any, shape: tuple[int, ...]) -> Any:
    """A tensor stored as raw bytes, viewed back as its dtype and shape."""
    return entry.load().view(dtype).reshape(shape)
