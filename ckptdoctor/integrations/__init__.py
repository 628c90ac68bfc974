"""The gate where users already are: callbacks for transformers' Trainer and Lightning, and an
Accelerate hook. Each module imports its framework lazily; `core` holds what they share
(after_save, gate, the weights_only-safe RNG state)."""

from .core import (
                   CheckpointRejected,
                   SaveRecord,
                   after_save,
                   gate,
                   load_rng_state,
                   restore_rng_state,
                   save_rng_state,
)

__all__ = ["CheckpointRejected", "SaveRecord", "after_save", "gate", "save_rng_state",
           "load_rng_state", "restore_rng_state"]
