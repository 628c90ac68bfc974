"""The torch side shared by every `--to torch` conversion: staging, the streaming zip writer,
verification by reloading the output through the loader chain, commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codes import Code
from .carry import copy_sidecars
from .codec import deep_equal
from .common import (
    CHUNK,
    MAPPED,
    ConvertError,
    ConvertResult,
    MappedReader,
    Options,
    compare_bytes,
    entry_chunks,
    holds,
)
from .loading import load_torch
from .staging import Staging
from .torch_writer import TensorRef, write_torch_zip

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def emit(dst: Path, opts: Options, result: ConvertResult, tree: Any, default_name: str,
         src_dir: Path | None = None, sidecars: tuple[str, ...] | None = None) -> None:
    """Write `tree` (TensorRefs for tensors) as one torch.save file: DST itself when it has a
    torch suffix, else DST/<default_name> in a new directory (with the source's sidecars)."""
    file_mode = dst.suffix in TORCH_SUFFIXES
    name = dst.name if file_mode else default_name
    staging = Staging(dst, "file" if file_mode else "dir", opts.overwrite)
    try:
        out = staging.path(name)
        result.tensors, result.bytes = write_torch_zip(out, tree, opts)
        if src_dir is not None:
            if sidecars is None:
                if not file_mode:
                    copy_sidecars(src_dir, staging, result)
            else:
                copy_sidecars(src_dir, staging, result, sidecars)
        if opts.verify:
            verify(out, tree, opts, str(staging.final(name)))
            result.verified = True
        result.files = staging.commit()
    except BaseException:
        staging.abort()
        raise


def verify(path: Path, tree: Any, opts: Options, rel: str) -> None:
    """Reload the written file through the loader chain (mmap) and compare it with the tree:
    same structure, equal non-tensor values, every tensor's bytes identical to its source,
    and tensors that were one TensorRef still share one storage."""
    try:
        loaded = load_torch(path, opts, rel=rel)
    except ConvertError as exc:
        raise ConvertError(Code.CONVERT_VERIFY.finding(
            rel, f"verification failed: the output does not reload: {exc.finding.message}")
        ) from None
    storages: dict[int, int] = {}

    def tensor_eq(ref: TensorRef, out: Any, where: str) -> None:
        if out.dtype != ref.dtype or tuple(out.shape) != tuple(ref.shape):
            raise _mismatch(rel, f"{where}: dtype/shape differ from the source")
        ptr = out.untyped_storage().data_ptr() if out.numel() else None
        if ptr is not None and storages.setdefault(id(ref), ptr) != ptr:
            raise _mismatch(rel, f"{where}: a shared tensor was written twice")
        reader = MappedReader(out, MAPPED.tensor_is_mapped(out))
        bad = compare_bytes(entry_chunks(ref.entry, ref.dtype, CHUNK), reader.read, 0,
                            ref.nbytes)
        reader.done()
        if bad is not None:
            raise _mismatch(rel, f"{where}: byte {bad} differs from the source")
        opts.tick("verify", ref.nbytes)

    _walk(tree, loaded, "", tensor_eq, rel)


def _walk(tree: Any, out: Any, where: str, tensor_eq: Any, rel: str) -> None:
    import torch

    from ..standins import StandIn

    if isinstance(tree, TensorRef):
        if not isinstance(out, torch.Tensor):
            raise _mismatch(rel, f"{where or '<root>'}: expected a tensor")
        if tree.parameter != isinstance(out, torch.nn.Parameter):
            raise _mismatch(rel, f"{where or '<root>'}: Parameter-ness differs")
        tensor_eq(tree, out, where or "<root>")
        return
    if isinstance(tree, dict):
        if type(out) is not type(tree) or list(out.keys()) != list(tree.keys()):
            raise _mismatch(rel, f"{where or '<root>'}: keys differ")
        for k in tree:
            _walk(tree[k], out[k], f"{where}.{k}" if where else str(k), tensor_eq, rel)
        if hasattr(tree, "__dict__") and vars(tree):
            d = deep_equal(vars(tree), vars(out))
            if d is not None:
                raise _mismatch(rel, f"{where or '<root>'}: attributes differ at {d}")
        return
    if isinstance(tree, (list, tuple)) and holds(tree, lambda x: isinstance(x, TensorRef)):
        if type(out) is not type(tree) or len(out) != len(tree):
            raise _mismatch(rel, f"{where or '<root>'}: sequence differs")
        for i, (a, b) in enumerate(zip(tree, out, strict=True)):
            _walk(a, b, f"{where}.{i}" if where else str(i), tensor_eq, rel)
        return
    if isinstance(tree, StandIn) and holds(tree.state, lambda x: isinstance(x, TensorRef)):
        _walk(tree.state, getattr(out, "state", None), f"{where}@state", tensor_eq, rel)
        return
    d = deep_equal(tree, out)
    if d is not None:
        raise _mismatch(rel, f"{where or '<root>'}: value differs at {d}")


def _mismatch(rel: str, message: str) -> ConvertError:
    return ConvertError(Code.CONVERT_VERIFY.finding(
        rel, f"verification failed: {message}",
        hint="the output was removed; re-run, and report it if it happens again"))
