"""Which kind of checkpoint SRC is, and the files that make it up. Decided from content and
layout (never from the extension alone), without unpickling anything."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, overload

from .common import TensorEntry, fail, holds, is_tensor

KINDS = ("torch", "lightning", "safetensors", "dcp", "deepspeed", "safe")
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_TORCH_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "consolidated.pth",
                  "consolidated.00.pth", "adapter_model.bin")
SAFE_FORMAT = "ckptdoctor.safe/1"


def _head(path: Path, n: int = 64) -> bytes:
    refuse_special(path)
    with open(path, "rb") as fh:
        return fh.read(n)


def refuse_special(path: Path) -> None:
    """ConvertError (CK004) when `path` is a FIFO, socket or device: opening one blocks or
    never ends, so it is never opened."""
    import stat

    from ..codes import Code
    from .common import ConvertError

    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing / unreadable: the open that follows says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConvertError(Code.NOT_REGULAR.finding(
            str(path), f"{Code.NOT_REGULAR.title}; never opened"))


def is_safetensors_file(path: Path) -> bool:
    h = _head(path, 9)
    if len(h) < 9:
        return False
    n = int.from_bytes(h[:8], "little")
    return 2 <= n <= 100_000_000 and h[8:9] == b"{"


def is_torch_file(path: Path) -> bool:
    h = _head(path, 16)
    return h.startswith(b"PK\x03\x04") or h.startswith(_LEGACY_MAGIC) or h[:1] == b"\x80"


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def detect(src: Path) -> str:
    """One of KINDS, or ConvertError saying what SRC looks like."""
    src = Path(src)
    if not src.exists():
        raise fail(src, f"{src} does not exist")
    refuse_special(src)
    if src.is_dir():
        if (src / ".metadata").is_file():
            return "dcp"
        if (src / "manifest.json").is_file() and (src / "state.json").is_file():
            return "safe"
        if deepspeed_tag_dir(src, quiet=True) is not None:
            return "deepspeed"
        if (src / "model.safetensors.index.json").is_file() or any(src.glob("*.safetensors")):
            return "safetensors"
        if torch_files(src, quiet=True):
            return "torch"
        raise fail(src, f"{src}: no checkpoint this converter knows (torch .bin/.pt, "
                        "safetensors, DCP .metadata, DeepSpeed latest/global_step*, ckptdoctor "
                        "safe directory)")
    if src.name == ".metadata":
        return "dcp"
    if src.name.endswith(".index.json"):
        files = _index_files(src)
        return "safetensors" if files and is_safetensors_file(files[0]) else "torch"
    if is_safetensors_file(src):
        return "safetensors"
    if is_torch_file(src):
        return "lightning" if is_lightning(src) else "torch"
    raise fail(src, f"{src}: not a torch, safetensors or DCP file")


def is_lightning(path: Path) -> bool:
    """A Lightning checkpoint: top-level `state_dict` plus Lightning's bookkeeping keys (read
    from the pickle statically)."""
    from ..pickles.scan import scan_bytes, top_keys

    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1),
                       None)
            if pkl is None or zf.getinfo(pkl).file_size > 256 << 20:
                return False
            keys = set(top_keys(scan_bytes(zf.read(pkl)).root))
    except (zipfile.BadZipFile, OSError):
        return False
    return "state_dict" in keys and bool(keys & {"pytorch-lightning_version", "lightning_version",
                                                 "optimizer_states", "loops"})


def _index_files(index: Path) -> list[Path]:
    try:
        doc = json.loads(index.read_text("utf-8"))
        weight_map = doc["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise fail(index, f"{index}: not a weight index (no weight_map)") from None
    names = list(dict.fromkeys(weight_map.values()))
    files = [index.parent / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise fail(index, f"{index.name} names shard(s) that do not exist: "
                          f"{', '.join(missing[:3])}",
                   hint="the save was incomplete; use the previous checkpoint")
    return files


def torch_files(src: Path, quiet: bool = False) -> list[Path]:
    """The torch file(s) of SRC: one file, an index's shards, or the weights in a directory."""
    src = Path(src)
    if src.is_file():
        return _index_files(src) if src.name.endswith(".index.json") else [src]
    index = src / "pytorch_model.bin.index.json"
    if index.is_file():
        return _index_files(index)
    for name in _TORCH_WEIGHTS:
        if (src / name).is_file():
            return [src / name]
    cands = sorted((p for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth")
                    and p.is_file() and is_torch_file(p)), key=lambda p: _natural(p.name))
    if len(cands) == 1:
        return cands
    if quiet:
        return []
    raise fail(src, f"{src}: {'no' if not cands else 'several'} torch weight files and no "
                    "pytorch_model.bin.index.json; pass the file (or the index) itself")


def safetensors_files(src: Path) -> list[Path]:
    src = Path(src)
    if src.is_file():
        return _index_files(src) if src.name.endswith(".index.json") else [src]
    indexes = sorted(src.glob("*.safetensors.index.json"))
    if (src / "model.safetensors.index.json").is_file():
        return _index_files(src / "model.safetensors.index.json")
    if len(indexes) == 1:
        return _index_files(indexes[0])
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    files = sorted(src.glob("*.safetensors"), key=lambda p: _natural(p.name))
    if len(files) == 1:
        return files
    raise fail(src, f"{src}: several safetensors files and no index; pass one file or the index")


def source_dir(src: Path) -> Path:
    return src if src.is_dir() else src.parent


@overload
def deepspeed_tag_dir(src: Path, quiet: Literal[False] = False) -> Path: ...
@overload
def deepspeed_tag_dir(src: Path, quiet: bool) -> Path | None: ...
def deepspeed_tag_dir(src: Path, quiet: bool = False) -> Path | None:
    """The tag directory (global_stepN) of a DeepSpeed checkpoint: SRC itself when it holds
    *_optim_states.pt, else the tag `latest` names (or the only global_step* directory)."""
    src = Path(src)
    if any(src.glob("*_optim_states.pt")):
        return src
    latest = src / "latest"
    if latest.is_file():
        tag = latest.read_text("utf-8", "replace").strip()
        if tag and (src / tag).is_dir() and any((src / tag).glob("*_optim_states.pt")):
            return src / tag
        if quiet:
            return None
        raise fail(src, f"{src}/latest names '{tag}', which is not a DeepSpeed tag directory",
                   hint="the save was interrupted before `latest` moved; pass an existing "
                        "global_step* directory explicitly")
    tags = sorted((p for p in src.glob("global_step*") if p.is_dir()
                   and any(p.glob("*_optim_states.pt"))), key=lambda p: _natural(p.name))
    if len(tags) == 1:
        return tags[0]
    if quiet:
        return None
    raise fail(src, f"{src}: not a DeepSpeed checkpoint (no `latest`, and "
                    f"{len(tags)} global_step* directories)")


# --- flattening -------------------------------------------------------------------------------
def flatten(obj: Any, origin: str = "") -> list[tuple[str, Any]]:
    """(key, leaf) pairs the way DCP's flatten_state_dict names them: nested mappings join
    with '.', lists and tuples that hold tensors by index, everything else is a leaf."""
    import torch

    out: list[tuple[str, Any]] = []
    seen: set[str] = set()

    def walk(prefix: str, v: Any, depth: int) -> None:
        if depth > 200:
            raise fail(origin, f"{prefix}: nesting deeper than 200 levels")
        if isinstance(v, Mapping) and not isinstance(v, torch.Tensor):
            if not v and prefix:
                add(prefix, v)
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x, depth + 1)
        elif isinstance(v, (list, tuple)) and holds(v, _tensor_like):
            for i, x in enumerate(v):
                walk(f"{prefix}.{i}" if prefix else str(i), x, depth + 1)
        else:
            add(prefix or "<root>", v)

    def add(key: str, v: Any) -> None:
        if key in seen:
            raise fail(origin, f"two entries flatten to the same key {key!r}",
                       hint="the object mixes dotted keys with nesting; use --to safe")
        seen.add(key)
        out.append((key, v))

    walk("", obj, 0)
    return out


def _tensor_like(v: Any) -> bool:
    """A tensor, or a lazy one (a DCP item the diff reads as the tree DCP would rebuild)."""
    return is_tensor(v) or isinstance(v, TensorEntry)


def storage_identity(t: Any) -> tuple | None:
    """Tensors with equal identity are the same data (tied weights)."""
    if t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
