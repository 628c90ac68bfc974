"""`save_pretrained` output: config.json + model.safetensors, or shards + an index.

`from_pretrained` needs config.json and one weights form; a sharded form is only as good as its
index (every shard present, every name in its shard)."""

from __future__ import annotations

import re
from typing import Any

from ..model import Finding, LayoutInfo
from .base import (
    SAFETENSORS,
    Consumer,
    DirView,
    LayoutBase,
    check_index,
    missing,
    top_files,
    weights_details,
)

# In the order from_pretrained looks for them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
LOAD_BIN = Consumer("weights_only", who="transformers from_pretrained "
                    "(torch.load(weights_only=True))")
SHARD_RE = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def weight_file(d: DirView) -> str | None:
    """The weights form from_pretrained would pick (an index stands for its shards)."""
    top = set(top_files(d))
    return next((n for n in WEIGHT_FILES if n in top), None)


def orphan_shards(d: DirView) -> list[str]:
    return [f for f in top_files(d) if SHARD_RE.fullmatch(f)]


def config_details(d: DirView) -> dict[str, Any]:
    cfg = d.read_json("config.json")
    if not isinstance(cfg, dict):
        return {}
    out = {k: cfg[k] for k in ("model_type", "architectures", "transformers_version")
           if k in cfg}
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    if isinstance(dtype, str):
        out["dtype"] = dtype
    return out


def check_weights(d: DirView, why: str) -> list[Finding]:
    """One weights form present (CK401) and, when indexed, consistent with its shards."""
    name = weight_file(d)
    shards = orphan_shards(d)
    if name is None and shards:
        m = SHARD_RE.fullmatch(shards[0])
        assert m is not None  # orphan_shards holds only names SHARD_RE matches
        return [missing(d, f"{m.group(1)}.{m.group(2)}.index.json", "weight shards exist but "
                        "are found only through their index; " + why)]
    if name is None:
        return [missing(d, "model.safetensors", f"no model weights ({', '.join(WEIGHT_FILES)}); "
                        + why)]
    return check_index(d, name) if name.endswith(".index.json") else []


class HfModel(LayoutBase):
    name = "hf-model"
    framework = "transformers"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        top = set(top_files(d))
        weights = weight_file(d) or next(iter(orphan_shards(d)), None)
        return weights is not None and ("config.json" in top or weights.endswith(".json"))

    def describe(self, d: DirView) -> LayoutInfo:
        name = weight_file(d)
        details = weights_details(d, [name] if name else orphan_shards(d))
        details.update(config_details(d))
        return LayoutInfo(self.name, d.rel, None, details)

    def checks(self, d: DirView) -> list[Finding]:
        out = [] if d.has("config.json") else [
            missing(d, "config.json", "from_pretrained cannot build the model without it")]
        return out + check_weights(d, "from_pretrained raises OSError")

    def consumer(self, d: DirView, rel: str) -> Consumer:
        return SAFETENSORS if rel.endswith(".safetensors") else LOAD_BIN


def is_weights(name: str) -> bool:
    """A top-level HF weight file name (single file, index or shard)."""
    return name in WEIGHT_FILES or SHARD_RE.fullmatch(name) is not None
