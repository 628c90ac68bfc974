"""A Trainer `output_dir`: several `checkpoint-<N>/` (plus, after training, the final model).

`get_last_checkpoint` / `resume_from_checkpoint=True` picks the highest N by name with no
completeness check (describe() names it `latest`), and `tmp-checkpoint-*` staging dirs are what
an interrupted atomic save leaves. check() is run-level only: each checkpoint listed in
describe()'s `checkpoints` is an hf-trainer checkpoint the caller checks on its own."""

from __future__ import annotations

import re

from ..model import Finding, LayoutInfo
from . import hf_model
from .base import Consumer, DirView, LayoutBase, check_common, numbered, top_dirs
from .hf_trainer import HfTrainer

TRAINER = HfTrainer()
MODEL = hf_model.HfModel()


def checkpoints(d: DirView) -> dict[int, str]:
    """{N: 'checkpoint-N'}: the dirs get_last_checkpoint considers, if Trainer wrote them."""
    return {n: name for n, name in sorted(numbered(top_dirs(d), r"checkpoint-(\d+)").items())
            if TRAINER.match(d.sub(name))}


class HfRun(LayoutBase):
    name = "hf-run"
    framework = "transformers"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        """checkpoint-N dirs, or only a staging tmp-checkpoint-N; a dir with its own
        trainer_state.json is one checkpoint (a stray staging dir inside it is a leftover)."""
        return bool(checkpoints(d)) or (not d.has("trainer_state.json") and any(
            re.fullmatch(r"tmp-checkpoint-\d+", s) for s in top_dirs(d)))

    def describe(self, d: DirView) -> LayoutInfo:
        ckpts = checkpoints(d)
        details = {"checkpoints": [TRAINER.describe(d.sub(c)).to_json() for c in ckpts.values()],
                   "latest": ckpts[max(ckpts)] if ckpts else None,
                   "final_model": MODEL.match(d)}
        return LayoutInfo(self.name, d.rel, max(ckpts) if ckpts else None, details)

    def children(self, d: DirView) -> list[str]:
        """The checkpoints validate and `latest` judge one by one."""
        return list(checkpoints(d).values())

    def check(self, d: DirView) -> list[Finding]:
        return check_common(d, tuple(checkpoints(d).values())) + self.checks(d)

    def checks(self, d: DirView) -> list[Finding]:
        """The final model save_model() left in output_dir, if any."""
        return MODEL.checks(d) if MODEL.match(d) else []

    def consumer(self, d: DirView, rel: str) -> Consumer:
        first, _, rest = rel.partition("/")
        if rest and re.fullmatch(r"(tmp-)?checkpoint-\d+", first):
            return TRAINER.consumer(d.sub(first), rest)
        return MODEL.consumer(d, rel)
