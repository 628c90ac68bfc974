"""The safetensors side shared by every `--to safetensors` conversion: prefix selection, tied
tensors, dtype, sharding + index, the non-tensor sidecar, staging, verification, commit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..codes import Code
from . import st_io
from .carry import copy_sidecars
from .codec import CodecError, decode, deep_equal, encode
from .common import ConvertError, ConvertResult, Options, TensorEntry, fail, target_dtype
from .staging import Staging, write_json

EXTRA_FORMAT = "ckptdoctor.extra/1"
_HEAD_WORDS = ("lm_head", "output", "decoder", "head", "classifier", "embed_out")
_EMBED_WORDS = ("embed", "wte", "tok_embeddings", "word_embeddings", "shared")


@dataclass
class Leaf:
    """A flattened source entry: a tensor (entry + identity for tie detection) or a value."""

    key: str
    entry: TensorEntry | None = None
    identity: tuple | None = None
    value: Any = None


def _keep_rank(name: str) -> tuple[int, str]:
    """Which of several names of one tensor to keep. transformers drops the tied *output*
    side (`lm_head.weight` when tie_word_embeddings) and re-ties it on load from the input
    embedding, so an embedding-like name wins, a head-like name loses; otherwise the first in
    sorted order, as safetensors' own _remove_duplicate_names does."""
    parts = name.lower().split(".")
    if any(any(w in p for w in _EMBED_WORDS) for p in parts):
        return (0, name)
    if any(p in _HEAD_WORDS for p in parts):
        return (2, name)
    return (1, name)


def select_prefix(leaves: list[Leaf], prefix: str | None, result: ConvertResult,
                  origin: str) -> list[Leaf]:
    if not prefix:
        return leaves
    kept, skipped = [], []
    for leaf in leaves:
        if leaf.key.startswith(prefix) and len(leaf.key) > len(prefix):
            leaf.key = leaf.key[len(prefix):]
            kept.append(leaf)
        else:
            skipped.append(leaf.key)
    if not kept:
        raise fail(origin, f"no entry starts with --strip-prefix {prefix!r}",
                   hint="keys look like: " + ", ".join(x.key for x in leaves[:3]))
    if skipped:
        result.skipped.extend(skipped)
        result.findings.append(Code.CONVERT_SKIPPED.finding(
            origin, f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} without the prefix "
                    f"{prefix!r} left out: " + ", ".join(skipped[:5])
                    + (" ..." if len(skipped) > 5 else ""), keys=skipped))
    return kept


def dedupe(leaves: list[Leaf], result: ConvertResult, origin: str) -> tuple[list[Leaf], dict]:
    """Store each shared tensor once; returns (unique tensor leaves, {alias: kept})."""
    groups: dict[tuple, list[Leaf]] = {}
    unique: list[Leaf] = []
    for leaf in leaves:
        if leaf.identity is None:
            unique.append(leaf)
            continue
        group = groups.setdefault(leaf.identity, [])
        if not group:
            unique.append(leaf)
        group.append(leaf)
    aliases: dict[str, str] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        keep = min(group, key=lambda x: _keep_rank(x.key))
        first = group[0]
        if keep is not first:  # the kept name takes the first one's place in the order
            unique[unique.index(first)] = keep
        for leaf in group:
            if leaf is not keep:
                aliases[leaf.key] = keep.key
    if aliases:
        result.aliases.update(aliases)
        result.findings.append(Code.CONVERT_ALIAS.finding(
            origin, "shared tensor(s) stored once: " + ", ".join(
                f"{a} -> {k}" for a, k in list(aliases.items())[:5])
            + (" ..." if len(aliases) > 5 else "") + " (recorded in __metadata__; transformers "
            "re-ties them on load)", aliases=aliases))
    return unique, aliases


def base_name(files: list[Path]) -> str:
    stem = files[0].name.split(".")[0] if files else "model"
    stem = stem.split("-0")[0]
    return "adapter_model" if stem.startswith("adapter_model") else "model"


def emit(src: Path, dst: Path, opts: Options, result: ConvertResult, leaves: list[Leaf],
         src_dir: Path | None, base: str = "model", origin: str = "",
         extra_source: str = "", more_values: list[Leaf] | tuple = (),
         expect_config: bool = False) -> None:
    """Write `leaves` (after --strip-prefix) as safetensors; non-tensor leaves and
    `more_values` (not prefix-selected) go to the sidecar."""
    origin = origin or str(src)
    leaves = select_prefix(leaves, opts.strip_prefix, result, origin)
    if opts.add_prefix:
        for leaf in leaves:
            leaf.key = opts.add_prefix + leaf.key
    tensors = [x for x in leaves if x.entry is not None]
    values = [x for x in leaves if x.entry is None] + list(more_values)
    if not tensors:
        raise fail(origin, "no tensors to write")
    unique, aliases = dedupe(tensors, result, origin)
    items = [st_io.StItem(x.key, e, target_dtype(e.dtype, opts.dtype))
             for x in unique if (e := x.entry) is not None]  # all: `tensors` hold an entry
    shards = st_io.shard(items, opts.max_shard_size)
    file_mode = dst.suffix == ".safetensors"
    if file_mode and len(shards) > 1:
        raise fail(dst, f"--max-shard-size splits the output into {len(shards)} files: give a "
                        "directory as DST, not a .safetensors file")
    names = [dst.name] if file_mode else st_io.shard_names(base, len(shards))
    staging = Staging(dst, "file" if file_mode else "dir", opts.overwrite)
    try:
        plans = []
        for name, shard_items in zip(names, shards, strict=True):
            meta = {"format": "pt"}
            in_shard = {it.name for it in shard_items}
            meta.update({a: k for a, k in aliases.items() if k in in_shard})
            p = st_io.plan(shard_items, meta)
            result.bytes += st_io.write(staging.path(name), p, opts)
            result.tensors += len(shard_items)
            plans.append((name, p))
        if len(shards) > 1:
            write_json(staging.path(f"{base}.safetensors.index.json"),
                       st_io.index_doc(shards, names))
        stem = dst.name.split(".")[0] if file_mode else base
        _extras(values, staging, opts, result, origin, stem, extra_source or src.name)
        if src_dir is not None and not file_mode:
            copy_sidecars(src_dir, staging, result, expect_config=expect_config)
        if opts.verify:
            for name, p in plans:
                st_io.verify(staging.path(name), p, opts, str(staging.final(name)))
            if len(shards) > 1:
                doc = json.loads(staging.path(f"{base}.safetensors.index.json").read_text())
                if doc != st_io.index_doc(shards, names):
                    raise ConvertError(Code.CONVERT_VERIFY.finding(str(dst), "index differs"))
            _verify_extras(staging, values, result)
            result.verified = True
        result.files = staging.commit()
    except BaseException:
        staging.abort()
        raise


def _extras(values: list[Leaf], staging: Staging, opts: Options, result: ConvertResult,
            origin: str, stem: str, source: str) -> None:
    if not values:
        return
    keys = [v.key for v in values]
    result.non_tensors.extend(keys)
    if opts.drop_non_tensors:
        result.findings.append(Code.CONVERT_NON_TENSOR.finding(
            origin, f"{len(keys)} non-tensor entr{'y' if len(keys) == 1 else 'ies'} dropped "
                    "(--drop-non-tensors): " + ", ".join(keys[:5])
                    + (" ..." if len(keys) > 5 else ""),
            keys=keys))
        return
    entries, bad = {}, []
    for v in values:
        try:
            entries[v.key] = encode(v.value)
        except CodecError as exc:
            bad.append(f"{v.key} ({exc})")
    if bad:
        result.skipped.extend(b.split(" (")[0] for b in bad)
        result.findings.append(Code.CONVERT_SKIPPED.finding(
            origin, "non-tensor entr(y/ies) that JSON cannot hold losslessly left out: "
                    + "; ".join(bad[:3]), hint="use --to safe to keep the whole object"))
    if not entries:
        return
    name = f"{stem}.extra.json"
    write_json(staging.path(name), {"format": EXTRA_FORMAT, "source": source, "entries": entries})
    result.non_tensor_sidecar = str(staging.final(name))
    result.findings.append(Code.CONVERT_NON_TENSOR.finding(
        origin, f"{len(entries)} non-tensor entr{'y' if len(entries) == 1 else 'ies'} kept in "
                f"{name}: " + ", ".join(list(entries)[:5]) + (" ..." if len(entries) > 5 else ""),
        keys=list(entries)))


def _verify_extras(staging: Staging, values: list[Leaf], result: ConvertResult) -> None:
    if result.non_tensor_sidecar is None:
        return
    name = Path(result.non_tensor_sidecar).name
    doc = json.loads(staging.path(name).read_text("utf-8"))
    for v in values:
        if v.key in doc["entries"]:
            where = deep_equal(v.value, decode(doc["entries"][v.key]))
            if where is not None:
                raise ConvertError(Code.CONVERT_VERIFY.finding(
                    name, f"verification failed: {v.key} differs after JSON round trip at {where}"))


def read_extras(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text("utf-8"))
    if doc.get("format") != EXTRA_FORMAT:
        return {}
    return {k: decode(v) for k, v in doc.get("entries", {}).items()}
