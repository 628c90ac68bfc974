"""`ckptdoctor diff A B`, as a library: what differs between two checkpoints of any mix of
formats (torch .bin/.pt, safetensors (sharded), DCP, DeepSpeed ZeRO, Lightning, HF Trainer and
Accelerate directories).

    from ckptdoctor.diff import diff
    report = diff("run/checkpoint-2", "run/checkpoint-4")
    report.equal, report.moved(), report.findings

Every file is read through the readers in convert/ (and so through the loader chain:
weights_only first, never an unrestricted unpickler). Entries are sorted into sections
(weights, optimizer, scheduler, rng, other); tensors are compared one pair at a time, in
chunks, so peak memory stays near the largest tensor pair (times --jobs), not the checkpoint.

`resume_equivalent=True` asks a stricter question: would B continue training exactly as A
would? Same entries, bit-identical tensors and dtypes, equal step / scheduler / RNG / every
other value, the same per-rank files. Differences are Findings (CK9xx, see codes.py).

The package, by concept: `report` (the result types and CK901's DiffError), `sides` (reading one
checkpoint into sections), `renames` (prefix renames between the key sets), `tensors` (one tensor
pair, streamed), `state` (training state, optimizer moments, plain values), `findings` (the
CK9xx findings, resume-equivalence included), `compare` (`diff`, which runs them), `render`
(text and JSON, pure)."""

from __future__ import annotations

from .compare import diff
from .renames import detect_renames
from .render import exit_code, render_text, to_json
from .report import DiffError, DiffReport, Rename, Section, TensorDiff, TrainingState
from .sides import Side, open_side
from .tensors import CHUNK_ELEMENTS, compare_pair

__all__ = ["diff", "open_side", "DiffReport", "TensorDiff", "Rename", "Section", "DiffError",
           "detect_renames", "render_text", "to_json", "exit_code",
           "Side", "TrainingState", "compare_pair", "CHUNK_ELEMENTS"]
