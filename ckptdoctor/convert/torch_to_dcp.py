"""A consolidated torch file -> a torch.distributed.checkpoint directory.

Written with DCP's own writer (FileSystemWriter + dcp.save(no_dist=True)), so the result is
exactly what DCP produces and `dcp.load` reads it. Not with `format_utils.torch_save_to_dcp`,
which loads the source with weights_only=False and keeps it all in memory: here the source
goes through the loader chain with mmap, and DCP plans on tiny stand-in tensors (right dtype
and shape, one element of memory) while `_LazyPlanner.resolve_data` hands it the real tensor
only when that item is written, then drops its pages / frees it before the next one. (DCP's
writer keeps a reference to every tensor it wrote until the file is done, which is why a
converted copy's storage is resized to 0 once it has been written.)

Nesting: DCP flattens nested dicts / lists to dotted keys and rebuilds them from
planner_data, which cannot tell int dict keys, tuples or empty dicts apart. The exact tree is
kept in `ckptdoctor.tree.json` beside `.metadata` (DCP ignores it; dcp -> torch uses it).
`params.json` next to the source is carried along."""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from pathlib import Path
from typing import Any

from ..codes import Code
from ..model import Severity
from ..standins import StandIn
from .carry import copy_sidecars
from .codec import CodecError, deep_equal, encode
from .common import (
    CHUNK,
    MAPPED,
    ConvertError,
    ConvertResult,
    FileReader,
    Options,
    Writeback,
    byte_chunks,
    compare_bytes,
    fail,
    holds,
    release_tensor,
    target_dtype,
)
from .dcp_read import TREE_FORMAT, TREE_NAME, DcpCheckpoint
from .loading import load_torch
from .sources import torch_files
from .staging import Staging, write_json

OPTIONS = {"dtype", "add_prefix", "nest", "params"}  # convert() options it honours


def _is_terminal(v: Any) -> bool:
    """DCP's traverse_state_dict: mappings are walked, lists holding tensors or walkable
    containers are walked by index, everything else (tuples too) is one leaf."""
    from collections.abc import Mapping

    import torch

    if isinstance(v, Mapping):
        return False
    if isinstance(v, list):
        for e in v:
            if isinstance(e, (Mapping, list)) and not _is_terminal(e):
                return False
            if isinstance(e, torch.Tensor):
                return False
        return True
    return True


def leaves_and_skeleton(state: dict) -> tuple[dict[str, Any], Any]:
    """(fqn -> leaf value, JSON skeleton with {"$t": "leaf", "fqn": ...} at the leaves)."""
    from collections import OrderedDict
    from collections.abc import Mapping

    leaves: dict[str, Any] = {}

    def walk(path: tuple, v: Any) -> Any:
        if isinstance(v, Mapping):
            items = [[k, walk(path + (str(k),), x)] for k, x in v.items()]
            plain = type(v) is dict and all(isinstance(k, str) for k in v) and "$t" not in v
            if plain:
                return {k: child for k, child in items}
            out = {"$t": "odict" if type(v) is OrderedDict else "dict",
                   "items": [[encode(k), child] for k, child in items]}
            if type(v) is OrderedDict and vars(v):
                with contextlib.suppress(CodecError):
                    out["attrs"] = encode(dict(vars(v)))
            return out
        if not _is_terminal(v) and isinstance(v, (list, tuple)):
            return [walk(path + (i,), x) for i, x in enumerate(v)]
        fqn = ".".join(map(str, path))
        leaves[fqn] = v
        return {"$t": "leaf", "fqn": fqn}

    skeleton = walk((), state)  # DCP walks the top-level dict like any mapping
    return leaves, skeleton


def _planner_class():
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    class _LazyPlanner(DefaultSavePlanner):
        """Plans on stand-ins; resolve_data returns the real tensor for the item being
        written, after releasing the previous one."""

        def __init__(self, real: dict[int, tuple[Any, bool]], dtype_choice: str, opts: Options):
            super().__init__(flatten_state_dict=True, flatten_sharded_tensors=True)
            self.real = real
            self.dtype_choice = dtype_choice
            self.opts = opts
            self._prev: tuple[Any, bool, bool] | None = None

        def resolve_data(self, write_item):
            self.release()
            obj = self.lookup_object(write_item.index)
            if write_item.type == WriteItemType.BYTE_IO:
                return self.transform_object(write_item, obj)
            t, mapped = self.real[id(obj)]
            t = t.detach()
            owned = False
            want = target_dtype(t.dtype, self.dtype_choice)
            if want != t.dtype:
                t, owned, mapped = t.to(want), True, False
            elif not t.is_contiguous() or \
                    t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t, owned, mapped = t.contiguous().clone(), True, False  # DCP would clone it too
            self._prev = (t, mapped, owned)
            self.opts.tick("write", t.numel() * t.element_size())
            return t

        def release(self) -> None:
            if self._prev is None:
                return
            t, mapped, owned = self._prev
            self._prev = None
            release_tensor(t, mapped)
            if owned:
                t.untyped_storage().resize_(0)  # written already; DCP still holds the tensor

    return _LazyPlanner


def run(src: Path, dst: Path, opts: Options, result: ConvertResult) -> None:
    write_dcp(src, dst, opts, result, _torch_state(src, opts))


def _torch_state(src: Path, opts: Options) -> Any:
    files = torch_files(src)
    state: Any = {}
    for f in files:
        obj = load_torch(f, opts)
        if not isinstance(obj, dict):
            raise fail(f, f"{f}: holds {type(obj).__name__}; DCP needs a dict at the top")
        if len(files) > 1:
            dup = set(obj) & set(state)
            if dup:
                raise fail(f, f"{sorted(dup)[0]} appears in more than one shard")
            state.update(obj)
        else:
            state = obj
    return state


def reshape_for_consumer(state: dict, opts: Options, src: Path) -> dict:
    """--add-prefix renames the top-level keys; --nest KEY puts the whole state dict under KEY
    (Lingua's init_ckpt_path loads {"model": model_state_dict})."""
    if opts.add_prefix:
        state = {f"{opts.add_prefix}{k}": v for k, v in state.items()}
    if opts.nest:
        if "." in opts.nest:
            raise fail(src, f"--nest {opts.nest!r}: one key without dots (DCP joins levels "
                            "with '.')")
        state = {opts.nest: state}
    return state


def write_params(staging: Staging, opts: Options, result: ConvertResult) -> bool:
    """--params FILE -> DST/params.json (JSON, or YAML when PyYAML is installed)."""
    if opts.params is None:
        return False
    path = opts.params
    text = path.read_text("utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml

                doc = yaml.safe_load(text)
            except ImportError:
                raise fail(path, f"--params {path}: YAML needs PyYAML; pass a JSON file") from None
            except Exception as exc:  # yaml's errors
                raise fail(path, f"--params {path}: not valid YAML: {exc}") from None
        if doc is None:
            raise fail(path, f"--params {path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise fail(path, f"--params {path}: holds {type(doc).__name__}, not an object")
    if not isinstance(doc.get("model"), dict):
        result.findings.append(Code.CONVERT_PARAMS.finding(
            str(path), f"{path.name} has no `model` object: Lingua's consolidated loader builds "
                       "the model from params.json's `model` section",
            hint='write {"model": {"dim": ..., "n_layers": ...}, ...} (the training config)'))
    write_json(staging.path("params.json"), doc)
    result.copied.append("params.json")
    return True


def write_dcp(src: Path, dst: Path, opts: Options, result: ConvertResult, state: Any) -> None:
    """Write `state` (a dict of tensors / values, tensors mmap-ed) as DCP at DST."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    state = reshape_for_consumer(state, opts, src)
    leaves, skeleton = leaves_and_skeleton(state)
    MAPPED.refresh()
    real: dict[int, tuple[Any, bool]] = {}
    standin_of: dict[int, Any] = {}

    def stand_in(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            if id(v) not in standin_of:
                s = torch.empty((), dtype=target_dtype(v.dtype, opts.dtype)).expand(v.shape)
                standin_of[id(v)] = s
                real[id(s)] = (v, MAPPED.tensor_is_mapped(v))
            return standin_of[id(v)]
        return v

    bad = [k for k, v in leaves.items()
           if not isinstance(v, torch.Tensor) and holds(v, lambda x: isinstance(x, StandIn))]
    if bad:
        raise fail(src, "entries hold objects of classes that are not installed here "
                        f"(loaded as stand-ins): {', '.join(bad[:5])}; DCP would pickle them",
                   hint="install the package that defines them, or convert --to safe")
    non_tensors = [k for k, v in leaves.items() if not isinstance(v, torch.Tensor)]
    result.non_tensors = non_tensors
    plan_state = _map_tree(state, stand_in)
    staging = Staging(dst, "dir", opts.overwrite)
    try:
        assert staging.dir is not None
        # fsync is left to the commit, after verification (the disk catches up meanwhile)
        writer = FileSystemWriter(str(staging.dir), single_file_per_rank=True, sync_files=False,
                                  thread_count=1, overwrite=True)
        planner = _planner_class()(real, opts.dtype, opts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(plan_state, storage_writer=writer, planner=planner, no_dist=True)
        planner.release()
        for f in staging.dir.iterdir():  # the disk catches up while we verify
            Writeback.start(f)
        written = set(getattr(planner, "mappings", {}) or {})
        if written == set(leaves):
            write_json(staging.dir / TREE_NAME, {"format": TREE_FORMAT, "fqns": sorted(leaves),
                                                 "tree": skeleton})
        else:
            result.findings.append(Code.CONVERT_SKIPPED.finding(
                str(dst), f"{TREE_NAME} not written: this torch flattens differently; "
                          "dcp -> torch will rebuild the nesting from planner_data",
                severity=Severity.INFO))
        for v in leaves.values():
            if isinstance(v, torch.Tensor):
                result.tensors += 1
                result.bytes += v.numel() * target_dtype(v.dtype, opts.dtype).itemsize
        if not write_params(staging, opts, result):
            copy_sidecars(src if src.is_dir() else src.parent, staging, result, ("params.json",))
        if opts.verify:
            _verify(staging.dir, leaves, opts, str(dst))
            result.verified = True
        result.files = staging.commit()
    except ConvertError:
        staging.abort()
        raise
    except BaseException as exc:
        staging.abort()
        cause = _dcp_cause(exc)
        if isinstance(cause, Exception):
            raise fail(dst, f"DCP save failed: {type(cause).__name__}: {cause}"
                       .splitlines()[0]) from exc
        raise


def _dcp_cause(exc: BaseException) -> BaseException:
    """DCP wraps a rank's failure (e.g. ValueError: duplicated flatten key) in a
    CheckpointException, a BaseException whose text is a traceback: the first wrapped one."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(exc, CheckpointException):
        for wrapped in exc.failures.values():
            return wrapped[0] if isinstance(wrapped, tuple) else wrapped
    return exc


def _map_tree(v: Any, fn: Any) -> Any:
    """`v` with fn applied to the tensors DCP stores as tensor items (containers DCP walks are
    rebuilt; leaves, including tuples that hold tensors, are shared as they are)."""
    from collections import OrderedDict
    from collections.abc import Mapping

    import torch

    if isinstance(v, Mapping):
        out = OrderedDict() if type(v) is OrderedDict else {}
        for k, x in v.items():
            out[k] = _map_tree(x, fn)
        return out
    if isinstance(v, list) and not _is_terminal(v):
        return [_map_tree(x, fn) for x in v]
    if isinstance(v, torch.Tensor):
        return fn(v)
    return v


def _verify(root: Path, leaves: dict[str, Any], opts: Options, rel: str) -> None:
    """Read the DCP back the way dcp -> torch does and compare every item with the source."""
    import torch

    ckpt = DcpCheckpoint(root, opts)
    readers: dict[Path, FileReader] = {}
    try:
        have = set(ckpt.tensors) | set(ckpt.bytes_items)
        if have != set(leaves):
            missing = sorted(set(leaves) - have)[:3] or sorted(have - set(leaves))[:3]
            raise _mismatch(rel, f"items differ from the source: {missing}")
        MAPPED.refresh()
        for fqn, src in leaves.items():
            if isinstance(src, torch.Tensor):
                if fqn not in ckpt.tensors:
                    raise _mismatch(rel, f"{fqn}: stored as bytes, expected a tensor")
                want = target_dtype(src.dtype, opts.dtype)
                meta = ckpt.tensors[fqn]
                if meta.dtype != want or tuple(meta.shape) != tuple(src.shape):
                    raise _mismatch(rel, f"{fqn}: dtype/shape differ from the source")
                nbytes = src.numel() * want.itemsize
                expected = byte_chunks(src, want, CHUNK, MAPPED.tensor_is_mapped(src))
                where = ckpt.raw_range(fqn)
                if where is not None:  # compare the stored bytes where they lie in the shard
                    readers.setdefault(where[0], FileReader(where[0]))
                    bad = compare_bytes(expected, readers[where[0]].read, where[1], nbytes)
                else:
                    out = ckpt.load_tensor(fqn)
                    flat = (out.contiguous().reshape(-1).view(torch.uint8).numpy()
                            if out.numel() else b"")
                    bad = compare_bytes(expected, functools.partial(_byte_slice, flat), 0, nbytes)
                    del out, flat
                if bad is not None:
                    raise _mismatch(rel, f"{fqn}: byte {bad} differs from the source")
                opts.tick("verify", nbytes)
            else:
                differs_at = deep_equal(src, ckpt.load_bytes(fqn))
                if differs_at is not None:
                    raise _mismatch(rel, f"{fqn}: value differs at {differs_at}")
        tree_doc = json.loads((root / TREE_NAME).read_text()) if (root / TREE_NAME).is_file() \
            else None
        if tree_doc is not None and set(tree_doc["fqns"]) != set(leaves):
            raise _mismatch(rel, f"{TREE_NAME} does not match the items")
    finally:
        for r in readers.values():
            r.close()
        ckpt.close()


def _byte_slice(flat: Any, off: int, n: int) -> Any:
    return flat[off:off + n]


def _mismatch(rel: str, message: str) -> ConvertError:
    return ConvertError(Code.CONVERT_VERIFY.finding(
        rel, f"verification failed: {message}",
        hint="the output was removed; re-run, and report it if it happens again"))
