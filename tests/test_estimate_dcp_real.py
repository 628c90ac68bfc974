"""The resume-memory estimate for torch.distributed.checkpoint (FSDP2) against the measured
peak RSS of a real resume: a 2-rank FSDP2 job (fully_shard, CPU, gloo) saves with dcp.save and
resumes in fresh processes with dcp.load + set_state_dict into its own sharded model and
optimizer state (tests/realds/estimate_dcp_job.py); each rank records the peak RSS the load
added (VmHWM reset to the current RSS just before dcp.load). The estimate (`inspect`, metadata
only) must be within 20% of every rank's peak.

What the load allocates (torch's FileSystemReader.read_data): each saved chunk is torch.load()ed
whole, copied into the job's tensor and dropped, and the previous chunk is still referenced
while the next loads: the two largest chunks, here exp_avg and exp_avg_sq of one 3072x3072
weight's half. The rest is fixed: ~1 MB of library code pages the first torch.load touches and
~1 MB of plans and Python objects, so the model is wide enough (chunks of 19 MB) for the chunks
to dominate. The share of the shards (weights + optimizer / world) is not allocated again: the
job holds it before the load. Skipped where torch.distributed cannot run gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptdoctor.estimate import estimate
from ckptdoctor.inspect import inspect_path
from tests.ranks import launch

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

JOB = Path(__file__).parent / "realds" / "estimate_dcp_job.py"
WORLD = 2
WIDTH = 3072
N_PARAMS = 2 * (WIDTH * WIDTH + WIDTH)  # the job's model, counted independently
CHUNK = WIDTH // WORLD * WIDTH * 4  # one rank's fp32 dim-0 shard of a weight or its moment
FACTOR = 0.2


def _launch(mode: str, ckpt: Path) -> None:
    launch(JOB, mode, ckpt, world=WORLD, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


def test_dcp_estimate_matches_the_measured_resume_peak(tmp_path):
    ckpt = tmp_path / "dcp"
    _launch("save", ckpt)
    _launch("resume", ckpt)
    runs = [json.loads(Path(f"{ckpt}.peak{r}.json").read_text()) for r in range(WORLD)]
    # the load happened: a fresh AdamW's moments are zeros until the checkpoint's are copied in
    assert all(run["exp_avg_abs"] > 0 for run in runs)
    est = estimate(inspect_path(ckpt))
    assert (est.sharding, est.world_size) == ("fsdp", WORLD)
    # the inputs, checked by arithmetic: fp32 weights, two fp32 Adam moments per parameter,
    # and the load step is two chunks of one rank's half of a 3072x3072 fp32 tensor
    assert est.params == N_PARAMS
    assert est.weights_bytes == 4 * N_PARAMS
    assert abs(est.optimizer_bytes - 8 * N_PARAMS) <= 0.01 * est.optimizer_bytes
    assert est.cpu_ram_steps == [(est.cpu_ram_steps[0][0], 2 * CHUNK)]
    assert est.cpu_ram_per_rank == 2 * CHUNK
    for rank, run in enumerate(runs):
        peak = run["peak"]
        assert abs(est.cpu_ram_per_rank - peak) <= FACTOR * peak, (rank, est.cpu_ram_per_rank,
                                                                   runs, est.cpu_ram_steps)
