"""The small files a model directory carries besides its weights (config.json,
generation_config.json, tokenizer files, params.json, adapter_config.json), carried from the
checkpoint directory or, when the checkpoint is one step of a run (`checkpoint-500/`,
`global_step500/`), from the directories above it: transformers' Trainer writes the tokenizer
and config into each checkpoint, but DeepSpeed's tag directory and hand-made step directories
keep them in the run directory. Every carried file is reported (CK730) with where it came
from; a training checkpoint converted to a model directory without any config.json is
reported too (CK731), since from_pretrained cannot load it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..codes import Code
from ..model import Severity
from .common import ConvertResult
from .staging import Staging

SIDECAR_FILES = (
    "config.json", "generation_config.json", "params.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "tokenizer.tiktoken", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "adapter_config.json",
    "train_params.yaml",
)
# a directory that is one save of a run: its parent is the run directory
_STEP_DIR = re.compile(r"^(checkpoint|global_step|step|iter|epoch)[-_=]?\d+", re.IGNORECASE)
_MAX_SIDECAR = 64 << 20  # a config or tokenizer file larger than this is not one


def search_dirs(start: Path) -> list[Path]:
    """`start`, then each parent while the current directory is a step directory."""
    out = [start]
    cur = start
    while _STEP_DIR.match(cur.name) and cur.parent != cur and len(out) < 3:
        cur = cur.parent
        out.append(cur)
    return out


def is_training_dir(d: Path) -> bool:
    """A Trainer / Accelerate checkpoint directory (its weights are meant for from_pretrained)."""
    return any((d / n).is_file() for n in ("trainer_state.json", "optimizer.pt", "scheduler.pt"))


def copy_sidecars(src_dir: Path | list[Path], staging: Staging, result: ConvertResult,
                  names: tuple[str, ...] = SIDECAR_FILES, expect_config: bool = False) -> None:
    """Carry each of `names` from the first directory that has it (the checkpoint directory,
    then its run directory); report what was carried and from where."""
    dirs = search_dirs(Path(src_dir)) if isinstance(src_dir, Path) else list(src_dir)
    dirs = [d for d in dirs if d.is_dir()]
    carried: dict[Path, list[str]] = {}
    for name in names:
        p = next((d / name for d in dirs if (d / name).is_file()), None)
        if p is None or p.stat().st_size > _MAX_SIDECAR:
            continue
        if staging.dir is None and staging.final(name).exists():
            result.findings.append(Code.CONVERT_SKIPPED.finding(
                str(p), f"{name} not copied: {staging.final(name)} exists", severity=Severity.INFO))
            continue
        out = staging.path(name)
        with open(p, "rb") as fi, open(out, "xb") as fo:
            shutil.copyfileobj(fi, fo, 8 << 20)
            fo.flush()
            os.fsync(fo.fileno())
        result.copied.append(name)
        carried.setdefault(p.parent, []).append(name)
    if carried:
        result.findings.append(Code.CONVERT_CARRIED.finding(
            str(dirs[0]), "carried " + "; ".join(f"{', '.join(names)} from {d}"
                                                 for d, names in carried.items()),
            files={str(d): names for d, names in carried.items()}))
    if expect_config and not {"config.json", "params.json", "adapter_config.json"} & set(
            result.copied):
        result.findings.append(Code.CONVERT_NO_CONFIG.finding(
            str(dirs[0]) if dirs else "",
            "no config.json in the checkpoint or its run directory: from_pretrained will say "
            "'Unrecognized model'",
            hint="copy the model's config.json (model.config.save_pretrained(DST)) next to the "
                 "weights"))
