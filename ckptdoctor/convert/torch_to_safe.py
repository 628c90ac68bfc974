"""A whole training checkpoint file (Lightning .ckpt, optimizer.pt, rng_state.pth, any
torch.save object) -> the `safe` format, a directory holding no pickle at all:

  tensors.safetensors  every tensor, keyed by its path in the object tree
                       ("optimizer_states/0/state/3/exp_avg"; '/' and '~' escaped as in
                       JSON pointers); a tensor referenced twice is stored once
  state.json           everything else, losslessly (tuples, int keys, numpy arrays and
                       scalars, Namespace, paths, enums, OrderedDict attributes, loader
                       stand-ins...; see codec.py), tensors as {"$t": "tensor", "key": ...}
  manifest.json        sha256 and size of both files

`--to torch` from such a directory gives back an equal object (safe_to_torch.py)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from . import st_io
from .codec import SKIP, CodecError, decode, deep_equal, encode
from .common import ConvertError, ConvertResult, Options, TensorEntry, fail, tensor_entry
from .loading import load_torch
from .sources import SAFE_FORMAT, storage_identity
from .staging import Staging, write_json

TENSORS, STATE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"

OPTIONS: set[str] = set()  # convert() options it honours


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    import torch

    if src.is_dir():
        raise fail(src, "--to safe converts one checkpoint file; pass the file")
    obj = load_torch(src, opts)
    keys: dict[Any, str] = {}
    items: list[st_io.StItem] = []
    by_key: dict[str, Any] = {}

    def hook(path: str, v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return None
        ident = storage_identity(v) or ("id", id(v))
        key = keys.get(ident)
        if key is None:
            key = keys[ident] = path or "<root>"
            entry = tensor_entry(key, v, str(src))
            try:
                st_io.st_dtype(v.dtype)
                items.append(st_io.StItem(key, entry, v.dtype))
            except KeyError:  # no safetensors dtype (complex128, ...): stored as raw bytes
                raw = TensorEntry(key, torch.uint8, (v.numel() * v.element_size(),),
                                  functools.partial(_raw_bytes, v),
                                  str(src), entry.mapped and v.is_contiguous())
                items.append(st_io.StItem(key, raw, torch.uint8))
            by_key[key] = v
        out: dict[str, Any] = {"$t": "tensor", "key": key,
                               "dtype": str(v.dtype).removeprefix("torch."),
               "shape": list(v.shape)}
        if isinstance(v, torch.nn.Parameter):
            out["parameter"] = True
        if v.requires_grad:
            out["requires_grad"] = True
        return out

    try:
        state = encode(obj, hook)
    except CodecError as exc:
        raise fail(src, f"cannot keep {exc}",
                   hint="this object has no lossless JSON form") from None
    result.tensors, result.non_tensors = len(items), []
    staging = Staging(dst, "dir", opts.overwrite)
    try:
        h = hashlib.sha256()
        p = st_io.plan(items, {"format": "pt", "ckptdoctor": SAFE_FORMAT})
        result.bytes = st_io.write(staging.path(TENSORS), p, opts, hasher=h)
        write_json(staging.path(STATE), {"format": SAFE_FORMAT, "source": src.name, "root": state})
        files = {TENSORS: {"size": os.path.getsize(staging.path(TENSORS)), "sha256": h.hexdigest()},
                 STATE: {"size": os.path.getsize(staging.path(STATE)),
                         "sha256": st_io.sha256_file(staging.path(STATE))}}
        write_json(staging.path(MANIFEST), {"format": SAFE_FORMAT, "algorithm": "sha256",
                                            "files": files})
        if opts.verify:
            st_io.verify(staging.path(TENSORS), p, opts, str(dst / TENSORS))
            doc = _read_json(staging.path(STATE))
            back = decode(doc["root"], lambda d: by_key[d["key"]] if d.get("$t") == "tensor"
                          else SKIP)
            where = deep_equal(obj, back, tensor_eq=lambda a, b: a is b)
            if where is not None:
                from ..codes import Code

                raise ConvertError(Code.CONVERT_VERIFY.finding(
                    str(dst / STATE), f"verification failed: {STATE} decodes differently at "
                                      f"{where}"))
            result.verified = True
        result.files = staging.commit()
    except BaseException:
        staging.abort()
        raise


def _raw_bytes(v: Any) -> Any:
    """A tensor safetensors has no dtype for, as its raw bytes."""
    import torch

    return v.contiguous().reshape(-1).view(torch.uint8)


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text("utf-8"))
