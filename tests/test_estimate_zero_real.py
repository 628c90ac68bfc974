"""The resume-memory estimate for DeepSpeed ZeRO-1/2/3 against the measured peak RSS of a real
resume: DeepSpeed itself saves a checkpoint on 2 CPU ranks (gloo) and loads it again with
`engine.load_checkpoint` in fresh processes (tests/realds/estimate_job.py); each rank records
the peak RSS the load added (VmHWM, the kernel's ru_maxrss, reset to the current RSS just before
the load). The estimate (`inspect`, metadata only) must be within 20% of every rank's peak.

Why 20%, and why it holds here: the load path's allocations are the files' tensor bytes
(exact, from the metadata), and the rest is Python objects, pickle framing and allocator
rounding, a few hundred KB against ~28 MB. The job runs with a fixed glibc mmap threshold and
malloc_trim before the load so tensors freed earlier (by initialize) are not silently reused,
which would hide the load from the RSS. ZeRO-3 saves the module's parameters as empty
placeholders: the estimate takes the weights from the fp32 partitions and the load's peak from
this rank's optim file alone. Skipped where deepspeed does not import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptdoctor.estimate import estimate
from ckptdoctor.inspect import inspect_path
from tests.ranks import launch

pytest.importorskip("deepspeed", reason="deepspeed is not installed")

JOB = Path(__file__).parent / "realds" / "estimate_job.py"
WORLD = 2
N_PARAMS = 2 * (1536 * 1536 + 1536)  # the job's model, counted independently
FACTOR = 0.2


def _launch(mode: str, stage: int, ckpt: Path) -> None:
    launch(JOB, mode, stage, ckpt, world=WORLD, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.oracle),
                                   pytest.param(2, marks=pytest.mark.oracle), 3])
def test_zero_estimate_matches_the_measured_resume_peak(tmp_path, stage):
    ckpt = tmp_path / f"z{stage}"
    _launch("save", stage, ckpt)
    _launch("resume", stage, ckpt)
    peaks = [json.loads(Path(f"{ckpt}.peak{r}.json").read_text())["peak"] for r in range(WORLD)]
    est = estimate(inspect_path(ckpt))
    assert (est.sharding, est.world_size) == (f"zero-{stage}", WORLD)
    # the inputs, checked by arithmetic: fp32 weights; per rank an fp32 master partition and
    # two Adam moments of params/world elements each
    assert abs(est.params - N_PARAMS) <= 0.01 * N_PARAMS
    assert abs(est.weights_bytes - 4 * N_PARAMS) <= 0.01 * est.weights_bytes
    steps = dict(est.cpu_ram_steps)
    optim_step = steps["this rank's *_optim_states.pt, loaded whole"]
    assert abs(optim_step - 3 * 4 * N_PARAMS // WORLD) <= 0.01 * optim_step
    model_step = steps["model weights (*_model_states.pt), then released"]
    if stage == 3:  # empty placeholders: ZeRO-3 restores the weights from the optim partition
        assert model_step < 0.01 * optim_step
        assert est.gpu_per_rank == (2 * est.weights_bytes + est.optimizer_bytes) // WORLD
    else:
        assert model_step == est.weights_bytes
    for rank, peak in enumerate(peaks):
        assert abs(est.cpu_ram_per_rank - peak) <= FACTOR * peak, (rank, est.cpu_ram_per_rank,
                                                                   peaks, est.cpu_ram_steps)


def test_zero3_frozen_parameters_are_counted(tmp_path):
    """ZeRO-3 saves frozen parameters per rank in the model states (frozen_param_fragments),
    trainable ones as fp32 partitions in the optim files: both are the model's weights.
    tests/realds/reshard_job.py with RESHARD_FROZEN=1: Linear(5, 7) frozen, Linear(7, 3)."""
    job = Path(__file__).parent / "realds" / "reshard_job.py"
    ckpt = tmp_path / "z3frozen"
    launch(job, "save", 3, ckpt, world=WORLD, env={"RESHARD_FROZEN": "1"})
    est = estimate(inspect_path(ckpt))
    frozen, trainable = 5 * 7 + 7, 7 * 3 + 3
    # each parameter is padded to a multiple of the world size: at most WORLD - 1 per parameter
    assert frozen + trainable <= est.params <= frozen + trainable + 4 * (WORLD - 1)
    assert est.weights_bytes == 4 * est.params
