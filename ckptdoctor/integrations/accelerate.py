"""Accelerate: `attach(accelerator)`, or the two functions it installs.

    from ckptdoctor.integrations.accelerate import attach
    attach(accelerator, rng_state=True)
    accelerator.save_state("ckpt/")     # then: validate, manifest, marker, one log line
    accelerator.load_state("ckpt/")     # first: the pre-resume gate (CheckpointRejected)

Accelerate's `register_save_state_pre_hook` runs *before* the files are written, so the
after-save step wraps `save_state` on this accelerator instance instead; `load_state` is
gated before Accelerate reads anything."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .core import CheckpointRejected, SaveRecord, after_save, gate, save_rng_state

__all__ = ["attach", "save_state", "load_state", "CheckpointRejected"]


def save_state(accelerator: Any, output_dir: Any = None, *, rng_state: bool = False,
               records: list[SaveRecord] | None = None, _save: Any = None, **kwargs: Any) -> str:
    """accelerator.save_state(output_dir), then after_save on the main process."""
    where = (_save or accelerator.save_state)(output_dir, **kwargs)
    where = str(where if where is not None else output_dir)
    if rng_state:
        save_rng_state(where, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and Path(where).exists():
        rec = after_save(where)
        if records is not None:
            records.append(rec)
    return where


def load_state(accelerator: Any, input_dir: Any = None, *, require_marker: bool = False,
               _load: Any = None, **kwargs: Any) -> Any:
    """The pre-resume gate on input_dir, then accelerator.load_state(input_dir)."""
    if input_dir is not None:
        gate(input_dir, require_marker=require_marker)
    return (_load or accelerator.load_state)(input_dir, **kwargs)


def attach(accelerator: Any, *, rng_state: bool = False, require_marker: bool = False) -> list:
    """Wrap this accelerator's save_state / load_state; returns the list of SaveRecords."""
    records: list[SaveRecord] = []
    save, load = accelerator.save_state, accelerator.load_state

    @functools.wraps(save)
    def wrapped_save(output_dir: Any = None, **kwargs: Any) -> str:
        return save_state(accelerator, output_dir, rng_state=rng_state, records=records,
                          _save=save, **kwargs)

    @functools.wraps(load)
    def wrapped_load(input_dir: Any = None, **kwargs: Any) -> Any:
        return load_state(accelerator, input_dir, require_marker=require_marker, _load=load,
                          **kwargs)

    accelerator.save_state, accelerator.load_state = wrapped_save, wrapped_load
    return records
