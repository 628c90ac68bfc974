"""The resume-memory estimate for Accelerate against the measured peak RSS of a real resume:
a single CPU process saves with `Accelerator.save_state` (model.safetensors, optimizer.bin,
random_states_0.pkl) after one AdamW step, and a fresh process builds the same model and
optimizer through `Accelerator.prepare` and resumes with `accelerator.load_state`
(tests/realds/estimate_accelerate_job.py); it records the peak RSS the load added (VmHWM reset
to the current RSS just before the load, glibc's mmap threshold fixed, malloc_trim first). The
estimate (`inspect`, metadata only) must be within 20% of the peak.

What the load allocates (accelerate's load_accelerator_state): the model file through
safetensors' load_model, copied into the parameters and released, then optimizer.bin
torch.load'ed whole and kept as the optimizer's state (optimizer.load_state_dict does not copy
same-dtype CPU tensors). The peak is the larger of the two, here the optimizer file (two fp32
moments: twice the weights). Skipped where accelerate does not import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptdoctor.estimate import estimate
from ckptdoctor.inspect import inspect_path
from tests.ranks import single

pytest.importorskip("accelerate", reason="accelerate is not installed")

JOB = Path(__file__).parent / "realds" / "estimate_accelerate_job.py"
WIDTH = 1536
N_PARAMS = 2 * (WIDTH * WIDTH + WIDTH)  # the job's model, counted independently
FACTOR = 0.2


def _run(mode: str, ckpt: Path) -> None:
    single(JOB, mode, ckpt, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


def test_accelerate_estimate_matches_the_measured_resume_peak(tmp_path):
    ckpt = tmp_path / "acc"
    _run("save", ckpt)
    assert {"model.safetensors", "optimizer.bin"} <= {p.name for p in ckpt.iterdir()}
    _run("resume", ckpt)
    run = json.loads(Path(f"{ckpt}.peak.json").read_text())
    # the load happened: a fresh AdamW has no moments until the checkpoint's are loaded
    assert run["exp_avg_abs"] > 0
    report = inspect_path(ckpt)
    assert report.layout.name == "accelerate"
    est = estimate(report)
    assert (est.sharding, est.world_size) == ("none", 1)
    # the inputs, checked by arithmetic: fp32 weights, two fp32 Adam moments per parameter
    # (plus AdamW's per-parameter `step` scalars)
    assert est.params == N_PARAMS
    assert est.weights_bytes == 4 * N_PARAMS
    assert abs(est.optimizer_bytes - 8 * N_PARAMS) <= 0.01 * est.optimizer_bytes
    (_, model_step), (_, optim_step) = est.cpu_ram_steps
    assert model_step == 4 * N_PARAMS
    assert optim_step == est.optimizer_bytes
    # the weights are released before the optimizer state is loaded: the larger, not the sum
    assert est.cpu_ram_per_rank == max(model_step, optim_step)
    peak = run["peak"]
    assert abs(est.cpu_ram_per_rank - peak) <= FACTOR * peak, (est.cpu_ram_per_rank, run,
                                                               est.cpu_ram_steps)
