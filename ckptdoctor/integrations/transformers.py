"""transformers: `CheckpointDoctorCallback`, a TrainerCallback.

    from ckptdoctor.integrations.transformers import CheckpointDoctorCallback
    cb = CheckpointDoctorCallback(rng_state=True)
    trainer = Trainer(..., callbacks=[cb])
    cb.attach(trainer)                                # gate resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True)

After each save (`on_save`, main process): static validate, manifest + completion marker,
optional weights_only-safe RNG state (every process writes its own rank's file), one log line.
The Trainer fires no event before it loads a checkpoint, so the pre-resume gate hooks
`trainer.train` itself (`attach`): `resume_from_checkpoint` (True = the newest
checkpoint-N, as the Trainer picks it) is validated first and a bad one raises
CheckpointRejected before anything is loaded."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .core import CheckpointRejected, SaveRecord, after_save, gate

__all__ = ["CheckpointDoctorCallback", "CheckpointRejected"]


class CheckpointDoctorCallback(TrainerCallback):
    def __init__(self, rng_state: bool = False, require_marker: bool = False,
                 fail_on_bad_save: bool = False, consumer: str = "framework") -> None:
        self.rng_state = rng_state
        self.require_marker = require_marker
        self.fail_on_bad_save = fail_on_bad_save
        self.consumer = consumer
        self.records: list[SaveRecord] = []

    # --- after each save ---------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):  # TrainerCallback API
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not ckpt.is_dir():
            return control
        rank = int(getattr(args, "process_index", 0) or 0)
        if self.rng_state and not state.is_world_process_zero:
            from .core import save_rng_state

            save_rng_state(ckpt, rank)
        if state.is_world_process_zero:
            rec = after_save(ckpt, rng_state=self.rng_state, rank=rank, consumer=self.consumer)
            self.records.append(rec)
            if not rec.ok and self.fail_on_bad_save:
                raise CheckpointRejected(str(ckpt), [f for f in rec.findings
                                                     if f.severity.name == "ERROR"])
        return control

    # --- before resume -------------------------------------------------------------------------
    def check(self, resume_from_checkpoint: Any, output_dir: str | os.PathLike) -> str | None:
        """Resolve `resume_from_checkpoint` as Trainer.train does and gate it. Returns the path
        (None: not resuming); raises CheckpointRejected."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(str(output_dir))
            if resume_from_checkpoint is None:
                return None  # the Trainer raises its own "No valid checkpoint found"
        gate(resume_from_checkpoint, consumer=self.consumer, require_marker=self.require_marker)
        return str(resume_from_checkpoint)

    def attach(self, trainer: Any) -> Any:
        """Add this callback (once) and gate `trainer.train(resume_from_checkpoint=...)`."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        original = trainer.train

        @functools.wraps(original)
        def train(resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.check(resume_from_checkpoint, trainer.args.output_dir)
            return original(resume_from_checkpoint, *args, **kwargs)

        trainer.train = train
        return trainer
