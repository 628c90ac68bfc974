"""The resume-memory estimate in `inspect` (metadata only) against measured peak RSS of the
real load paths (child processes), within 20%. The checkpoints are written by a real
transformers Trainer and a real Lightning fit on models big enough (~50 MB of weights) that
allocator noise does not dominate; the Trainer's is resumed by a real
trainer.train(resume_from_checkpoint=...)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.codes import Code
from ckptdoctor.estimate import estimate
from ckptdoctor.inspect import inspect_path
from tests.ranks import single

try:
    from tests.fixtures import factory as F
except ImportError:
    from fixtures import factory as F

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

_MEASURE = textwrap.dedent("""
    import resource, sys
    import torch

    def status(field):
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field + ":"))

    def peak():
        # ru_maxrss, unless the fork from a big parent left its peak above ours: then the
        # kernel's own high-water mark, reset below with clear_refs
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - inherited,
                   status("VmHWM"))

    what, *paths = sys.argv[1:]
    torch.zeros(1)  # warm the allocator
    inherited = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - status("VmRSS"))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    base = peak()
    held = []
    for p in paths:                             # Lightning: torch.load, whole file
        held.append(torch.load(p, map_location="cpu", weights_only=True))
    print(peak() - base)
""")


def _measure(*paths: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _MEASURE, "x", *map(str, paths)],
                         capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1])


TRAINER_JOB = ROOT / "tests" / "realhf" / "estimate_trainer_job.py"


def _trainer_job(mode: str, out: Path) -> None:
    # glibc's mmap threshold fixed: freed tensors go back to the kernel, so the RSS shows
    # what the resume allocates
    single(TRAINER_JOB, mode, out, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


@pytest.fixture(scope="module")
def big_trainer_ckpt(tmp_path_factory) -> Path:
    """One real Trainer step on a GPT-2 with a 50k vocabulary (~13M params), saved
    (tests/realhf/estimate_trainer_job.py)."""
    out = tmp_path_factory.mktemp("big") / "out"
    _trainer_job("save", out)
    return out / "checkpoint-1"


def test_trainer_estimate_matches_the_measured_resume_peak(big_trainer_ckpt):
    """A fresh process builds the model and Trainer and resumes with the real
    trainer.train(resume_from_checkpoint=...), measured up to the first step."""
    ck = big_trainer_ckpt
    est = estimate(inspect_path(ck))
    assert est.optimizer_recorded and est.params > 10_000_000
    # the inputs, by independent arithmetic: Adam's two fp32 moments per fp32 parameter,
    # and the model file's tensors (the tied lm_head stored once)
    assert abs(est.optimizer_bytes - 2 * 4 * est.params) <= 0.01 * est.optimizer_bytes
    (_, model_step), (_, optim_step) = est.cpu_ram_steps
    assert model_step == est.weights_bytes == 4 * est.params
    assert optim_step == est.optimizer_bytes
    # the weights are dropped before optimizer.pt is loaded: the larger, not the sum
    assert est.cpu_ram_per_rank == max(model_step, optim_step)
    out = ck.parent
    _trainer_job("resume", out)
    run = json.loads(Path(f"{out}.peak.json").read_text())
    # the resume happened and stopped before any step: the checkpoint's moments are loaded
    assert run["exp_avg_abs"] > 0 and run["global_step"] == 1
    peak = run["peak"]
    assert abs(est.cpu_ram_per_rank - peak) <= 0.2 * peak, (est.cpu_ram_per_rank, run)
    # the sum (what the estimate said before this check) is outside the bound
    assert model_step + optim_step > 1.2 * peak


def test_lightning_estimate_matches_measured_peak(tmp_path):
    import pytorch_lightning as pl
    import torch
    from torch import nn

    class Big(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2048, 2048), nn.Linear(2048, 1024))

        def training_step(self, batch, _i):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2048)),
                                       batch_size=2)
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", enable_checkpointing=False)
    trainer.fit(Big(), data)
    ckpt = tmp_path / "big.ckpt"
    trainer.save_checkpoint(ckpt)
    est = estimate(inspect_path(ckpt))
    measured = _measure(ckpt)
    assert abs(est.cpu_ram_per_rank - measured) <= 0.2 * measured, (est.cpu_ram_per_rank, measured)


def test_limits_warn_and_cli_options(big_trainer_ckpt):
    ck = big_trainer_ckpt
    est = estimate(inspect_path(ck), ram=1_000_000, gpu_mem=1_000_000)
    assert {f.code for f in est.findings} == {Code.EST_OVER_RAM.code, Code.EST_OVER_GPU.code}
    roomy = estimate(inspect_path(ck), ram=10**12, gpu_mem=10**12)
    assert not [f for f in roomy.findings if f.code in (Code.EST_OVER_RAM.code,
                                                         Code.EST_OVER_GPU.code)]
    # without --ram the local machine's available memory is the limit
    local = estimate(inspect_path(ck), local_ram=1000)
    over = [f for f in local.findings if f.code == Code.EST_OVER_RAM.code]
    assert over and "this machine" in over[0].message
    res = runner.invoke(app, ["inspect", str(ck), "--ram", "1MB", "--gpu-mem", "1MB"])
    assert res.exit_code == 0, res.output
    assert "CK920" in res.output and "CK921" in res.output
    res = runner.invoke(app, ["inspect", str(ck), "--json"])
    doc = json.loads(res.output)["memory_estimate"]
    assert doc["cpu_ram_per_rank"] == est.cpu_ram_per_rank
    res = runner.invoke(app, ["inspect", str(ck), "--ram", "plenty"])
    assert res.exit_code == 2 and "CK922" in res.output


def test_zero_sharding_divides_per_rank(tmp_path):
    """ZeRO-2 over 2 ranks: weights whole, gradients + optimizer halved per rank; the
    consolidation needs the full fp32 model."""
    src = F.make_deepspeed(tmp_path / "ds", stage=2, world_size=2)
    est = estimate(inspect_path(src))
    assert (est.sharding, est.world_size) == ("zero-2", 2)
    assert est.gpu_per_rank == est.weights_bytes + (est.grads_bytes + est.optimizer_bytes) // 2
    expected = F.deepspeed_expected_state_dict(src, stage=2, world_size=2)
    numel = sum(t.numel() for t in expected.values())
    assert est.consolidation_ram >= numel * 4


def test_estimate_never_imports_torch(big_trainer_ckpt):
    code = ("import sys; from ckptdoctor.inspect import inspect_path; "
            "from ckptdoctor.estimate import estimate; "
            f"estimate(inspect_path({str(big_trainer_ckpt)!r})); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip() == "False"


def test_run_directory_estimates_its_newest_checkpoint(tmp_path):
    run = F.make_hf_trainer_run(tmp_path / "run", steps=4, save_steps=2)
    whole = estimate(inspect_path(run))
    newest = estimate(inspect_path(run / "checkpoint-4"))
    assert whole.checkpoint.endswith("checkpoint-4")
    assert (whole.params, whole.weights_bytes, whole.optimizer_bytes, whole.cpu_ram_per_rank) == \
        (newest.params, newest.weights_bytes, newest.optimizer_bytes, newest.cpu_ram_per_rank)
    # independent: the parameter count of the saved weights
    from safetensors import safe_open

    with safe_open(run / "checkpoint-4" / "model.safetensors", "pt") as fh:
        keys = fh.keys()  # safe_open has keys() but no __iter__
        n = sum(math.prod(fh.get_slice(k).get_shape()) for k in keys)
    assert newest.params == n
