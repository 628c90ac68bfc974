"""PEFT `save_pretrained`: adapter_config.json + adapter_model.safetensors (or .bin); extra
adapters go to `<dir>/<adapter_name>/`.

The classic failure is an adapter that saved without error but holds nothing: the "443-byte
adapter_model.bin" (an empty dict) or ZeRO-3 saves of ungathered, zero-sized tensors. With peft
0.21 the first loads with only a "missing adapter keys" warning (a fresh adapter: the base model)
and the second raises a size mismatch, so tensor count, sizes and LoRA ranks are checked against
the config."""

from __future__ import annotations

from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo, Severity, TensorInfo
from .base import (
    SAFETENSORS,
    Consumer,
    DirView,
    LayoutBase,
    join,
    load_json,
    missing,
    top_dirs,
    top_files,
    weights_details,
)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LOAD_BIN = Consumer("weights_only", who="peft load_peft_weights (torch.load(weights_only=True))")


def adapter_file(d: DirView, sub: str = "") -> str | None:
    top = set(top_files(d, sub))
    return next((join(sub, n) for n in ADAPTER_FILES if n in top), None)


def adapter_dirs(d: DirView) -> list[str]:
    """Adapters saved under `<dir>/<adapter_name>/` (non-default adapter names)."""
    return [s for s in top_dirs(d) if adapter_file(d, s) or d.has(join(s, "adapter_config.json"))]


def check_adapter(d: DirView, sub: str = "") -> list[Finding]:
    """Config parses (CK401/CK415), weights exist (CK401), tensors non-empty (CK410), LoRA
    tensors match target_modules and r (CK411)."""
    cfg, out = load_json(d, join(sub, "adapter_config.json"),
                         "PeftModel.from_pretrained reads it before the weights")
    rel = adapter_file(d, sub)
    if rel is None:
        return out + [missing(d, join(sub, ADAPTER_FILES[0]), "the adapter weights "
                              f"({' or '.join(ADAPTER_FILES)})")]
    info = d.info(rel)
    if info.size == 0 or (not info.tensors and any(f.severity is Severity.ERROR
                                                   for f in info.findings)):
        return out  # unreadable: the file's own findings say why
    empty = [t for t in info.tensors if t.numel == 0]
    if not info.tensors or empty:
        # checked against peft 0.21.2: no tensors -> PeftModel.from_pretrained only warns
        # "Found missing adapter keys" and keeps the fresh LoRA (B = 0, the base model);
        # zero-sized tensors -> RuntimeError "size mismatch ... torch.Size([0])"
        what = (f"holds no tensors ({info.size} bytes): PeftModel.from_pretrained only warns "
                "'Found missing adapter keys' and runs a freshly initialised adapter, i.e. "
                "the base model" if not info.tensors
                else f"{len(empty)} of {len(info.tensors)} tensors are empty, e.g. "
                     f"{empty[0].name} {list(empty[0].shape)}: PeftModel.from_pretrained "
                     "raises 'size mismatch ... copying a param with shape torch.Size([0])'")
        out.append(Code.ADAPTER_EMPTY.finding(
            d.outer(rel), f"{rel} {what}",
            hint="the adapter was saved before its weights were gathered (ZeRO-3) or from the "
                 "wrong model object; save again with the gathered PEFT model"))
        return out
    if isinstance(cfg, dict) and cfg.get("peft_type") == "LORA":
        out += check_lora(d, rel, cfg, info.tensors)
    return out


def check_lora(d: DirView, rel: str, cfg: dict[str, Any], tensors: list[TensorInfo]
               ) -> list[Finding]:
    """lora_A is [r, in, ...] and lora_B is [out, r, ...], each A has its B, every listed
    target module has tensors (CK411)."""
    a = {t.name[:-len(".lora_A.weight")]: t.shape for t in tensors
         if t.name.endswith(".lora_A.weight")}
    b = {t.name[:-len(".lora_B.weight")]: t.shape for t in tensors
         if t.name.endswith(".lora_B.weight")}
    r = cfg.get("r")
    ranks = {r} | {v for v in (cfg.get("rank_pattern") or {}).values() if isinstance(v, int)}
    bad = []
    for mod in sorted(set(a) | set(b)):
        sa, sb = a.get(mod), b.get(mod)
        if sa is None or sb is None:
            bad.append(f"{mod}: lora_{'A' if sa is None else 'B'} missing")
        elif len(sa) < 2 or len(sb) < 2 or sa[0] != sb[1] or sa[0] not in ranks:
            bad.append(f"{mod}: lora_A {list(sa)}, lora_B {list(sb)} for r={r}")
    out = []
    if bad:
        out.append(Code.ADAPTER_MISMATCH.finding(
            d.outer(rel), f"{len(bad)} LoRA module(s) do not match adapter_config: {bad[0]}",
            hint="adapter_config.json and the weights come from different saves", modules=bad[:20]))
    targets = cfg.get("target_modules")
    if isinstance(targets, list) and a:
        unused = [t for t in targets if not any(m == t or m.endswith("." + t) for m in a)]
        if unused:
            out.append(Code.ADAPTER_TARGET_UNUSED.finding(
                d.outer(rel), f"target_modules {unused} have no LoRA tensors in {rel}",
                hint="the adapter was saved from a different config, or those modules do not "
                     "exist in the base model", unused=unused))
    return out


class Peft(LayoutBase):
    name = "peft"
    framework = "peft"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        return d.has("adapter_config.json") or adapter_file(d) is not None

    def describe(self, d: DirView) -> LayoutInfo:
        return LayoutInfo(self.name, d.rel, None, adapter_details(d))

    def checks(self, d: DirView) -> list[Finding]:
        out = check_adapter(d) if self.match(d) else []
        for sub in adapter_dirs(d):
            out += check_adapter(d, sub)
        return out

    def consumer(self, d: DirView, rel: str) -> Consumer:
        return SAFETENSORS if rel.endswith(".safetensors") else LOAD_BIN


def adapter_details(d: DirView, sub: str = "") -> dict[str, Any]:
    cfg = d.read_json(join(sub, "adapter_config.json"))
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        out = {k: cfg[k] for k in ("peft_type", "r", "lora_alpha", "target_modules",
                                   "base_model_name_or_path", "task_type", "peft_version")
               if cfg.get(k) is not None}
    rel = adapter_file(d, sub)
    if rel:
        out.update(weights_details(d, [rel]), tensors=len(d.info(rel).tensors))
    others = adapter_dirs(d) if not sub else []
    if others:
        out["adapters"] = others
    return out
