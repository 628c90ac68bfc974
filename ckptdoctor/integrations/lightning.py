"""Lightning: `CheckpointDoctor`, a Callback.

    from ckptdoctor.integrations.lightning import CheckpointDoctor
    trainer = Trainer(callbacks=[CheckpointDoctor(rng_state=True)])
    trainer.fit(model, ckpt_path="last")

Lightning has no hook after a checkpoint file is written, so at `setup` the callback wraps the
strategy's CheckpointIO: after each `save_checkpoint` (global rank 0) it validates the file and
writes `<file>.ckptdoctor-complete.json` (size + sha256 + verdict; `remove_checkpoint` removes
it with the file), and every `load_checkpoint` (fit/validate with ckpt_path, which Lightning
calls after `setup`) first goes through the pre-resume gate: a bad checkpoint raises
CheckpointRejected before Lightning reads it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

try:  # the package this project's extras install; `lightning` (the umbrella) otherwise
    from pytorch_lightning.callbacks import Callback
except ImportError:
    from lightning.pytorch.callbacks import Callback  # type: ignore[no-redef]  # same class

from .core import CheckpointRejected, SaveRecord, after_save, gate, marker_path, save_rng_state

__all__ = ["CheckpointDoctor", "CheckpointRejected"]


class CheckpointDoctor(Callback):
    def __init__(self, rng_state: bool = False, require_marker: bool = False,
                 consumer: str = "framework") -> None:
        self.rng_state = rng_state
        self.require_marker = require_marker
        self.consumer = consumer
        self.records: list[SaveRecord] = []
        self._wrapped: set[int] = set()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # runs before Lightning restores a checkpoint: every load goes through the gate
        self._wrap(trainer)

    def _wrap(self, trainer: Any) -> None:
        io = trainer.strategy.checkpoint_io
        if id(io) in self._wrapped:
            return
        self._wrapped.add(id(io))
        save, remove, load = io.save_checkpoint, io.remove_checkpoint, io.load_checkpoint

        def load_checkpoint(path: Any, *args: Any, **kwargs: Any) -> Any:
            if "://" not in str(path):  # remote paths: Lightning's own fsspec load
                gate(path, consumer=self.consumer, require_marker=self.require_marker)
            return load(path, *args, **kwargs)

        def save_checkpoint(checkpoint: Any, path: Any, storage_options: Any = None) -> None:
            save(checkpoint, path, storage_options=storage_options)
            if trainer.is_global_zero and Path(path).exists():
                p = Path(path)
                if self.rng_state:
                    save_rng_state(p.parent, trainer.global_rank)
                self.records.append(after_save(p, consumer=self.consumer))

        def remove_checkpoint(path: Any) -> None:
            remove(path)
            with contextlib.suppress(OSError):
                marker_path(path).unlink()

        io.save_checkpoint = save_checkpoint
        io.load_checkpoint = load_checkpoint
        io.remove_checkpoint = remove_checkpoint
