"""`ckptdoctor reshard` proved by real resumes: DeepSpeed ZeRO-2 (CPU, gloo, one process per
rank, tests/realds/reshard_job.py) saved on N ranks, resharded through the CLI to M ranks, and
resumed by DeepSpeed's own `load_checkpoint` on M ranks. The reference is the original
checkpoint resumed on its own N ranks. Compared, from what DeepSpeed itself holds after
loading: every rank's fp32 partition and Adam moments concatenated in rank order (the
unsharded state), the loss on a fixed batch, and the loss after one more optimizer step (every
rank sees the same batch, so the data-parallel mean gradient does not depend on the world
size). Skipped where deepspeed does not import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoctor.cli import app
from tests.ranks import launch

pytest.importorskip("deepspeed", reason="deepspeed is not installed")

JOB = Path(__file__).parent / "realds" / "reshard_job.py"
runner = CliRunner()


def _launch(world: int, mode: str, ckpt: Path, stage: int = 2, bf16: bool = False,
            sub_group: int | None = None, frozen: bool = False, optim: str = "adamw") -> None:
    launch(JOB, mode, stage, ckpt, world=world,
           env={"RESHARD_BF16": "1" if bf16 else "0",
                "RESHARD_SUB_GROUP": str(sub_group) if sub_group else "",
                "RESHARD_FROZEN": "1" if frozen else "0", "RESHARD_OPTIM": optim})


def _resumed(ckpt: Path, world: int, stage: int = 2, bf16: bool = False,
             sub_group: int | None = None, frozen: bool = False, optim: str = "adamw") -> dict:
    """What DeepSpeed holds after load_checkpoint on `world` ranks, unsharded (ZeRO-3: per
    parameter, each parameter's slices of all ranks joined in rank order)."""
    _launch(world, "resume", ckpt, stage, bf16, sub_group, frozen, optim)
    ranks = [json.loads(Path(f"{ckpt}.rank{r}.json").read_text()) for r in range(world)]
    out = {"step": {r["step"] for r in ranks}, "loss": {r["loss"] for r in ranks},
           "loss_after_step": {r["loss_after_step"] for r in ranks}, "groups": []}
    for i in range(len(ranks[0]["groups"])):
        out["groups"].append({k: sum((r["groups"][i][k] for r in ranks), [])
                              for k in ranks[0]["groups"][i] if k != "adam_step"})
        out["groups"][i]["adam_step"] = {r["groups"][i]["adam_step"] for r in ranks}
    out["params"] = {name: {k: sum((r["params"][name][k] for r in ranks), [])
                            for k in ("fp32", "exp_avg", "exp_avg_sq")}
                     for name in ranks[0].get("params", {})}
    out["param_steps"] = {p["adam_step"] for r in ranks for p in r.get("params", {}).values()}
    return out


class _Saved(dict):
    """(stage, ranks) -> (checkpoint saved by DeepSpeed, its state resumed on those ranks)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, key):
        stage, n, bf16, sub_group = key if len(key) == 4 else (*key, None)
        ckpt = self.root / f"z{stage}_dp{n}{'_bf16' if bf16 else ''}_sg{sub_group}"
        _launch(n, "save", ckpt, stage, bf16, sub_group)
        self[key] = (ckpt, _resumed(ckpt, n, stage, bf16, sub_group))
        return self[key]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return _Saved(tmp_path_factory.mktemp("reshard"))


def _reshard(src: Path, dst: Path, m: int, *extra: str):
    return runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", str(m), *extra])


@pytest.mark.parametrize("stage,n,m,bf16", [(2, 2, 1, False), (2, 2, 3, False),
                                             (2, 1, 2, False),
                                             # longer matrix (make oracle): ZeRO-1, bf16
                                             pytest.param(1, 2, 1, False, marks=pytest.mark.oracle),
                                             pytest.param(2, 2, 1, True, marks=pytest.mark.oracle)])
def test_resharded_zero_resumes_with_equal_state_and_loss(saved, tmp_path, stage, n, m, bf16):
    src, reference = saved[(stage, n, bf16)]
    dst = tmp_path / f"dp{n}_to_{m}"
    r = _reshard(src, dst, m)
    assert r.exit_code == 0, r.output
    assert "CK736" in r.output and f"ZeRO-{stage}" in r.output and f"{n} -> {m} ranks" in r.output
    tag = (dst / "latest").read_text()
    assert tag == (src / "latest").read_text()
    prefix = "bf16_zero" if bf16 else "zero"
    assert sorted(p.name for p in (dst / tag).glob("*_optim_states.pt")) == [
        f"{prefix}_pp_rank_{k}_mp_rank_00_optim_states.pt" for k in range(m)]
    assert f"wrote {dst / tag / (prefix + '_pp_rank_0_mp_rank_00_optim_states.pt')}" in r.output
    # ckptdoctor's own gate agrees: rank files match partition_count and the world size
    assert runner.invoke(app, ["validate", str(dst)]).exit_code == 0
    got = _resumed(dst, m, stage, bf16)
    assert got == reference  # exact: fp32 weights, exp_avg, exp_avg_sq, step, both losses
    assert len(reference["loss"]) == 1 and len(reference["groups"][0]["fp32"]) == 66
    _consolidated_equal(src, dst)


@pytest.mark.parametrize("n,m", [(2, 3), pytest.param(2, 1, marks=pytest.mark.oracle)])
def test_resharded_zero2_with_adafactor_resumes(tmp_path, n, m):
    """An optimizer other than Adam: torch.optim.Adafactor as DeepSpeed's client optimizer.
    On ZeRO's flat 1-D partition its second moment is one `variance` per element (the
    factored row/column form is for 2-D parameters, which ZeRO-1/2 never hands it), so it is
    re-split like Adam's moments; the resumed state (fp32 weights, variance, step) and the
    loss equal the reference. The loss after the next step is not compared: Adafactor scales
    each step by the RMS of the tensor it is given (torch/optim/_adafactor.py: `alpha =
    max(eps2, param.norm(2) / sqrt(numel))`, and the update's RMS clip), which under ZeRO is
    the rank's partition, so that step depends on the world size whatever the checkpoint."""
    src = tmp_path / f"adafactor_dp{n}"
    _launch(n, "save", src, 2, optim="adafactor")
    reference = _resumed(src, n, 2, optim="adafactor")
    assert sorted(reference["groups"][0]) == ["adam_step", "fp32", "variance"]
    assert len(reference["groups"][0]["variance"]) == 66
    dst = tmp_path / f"adafactor_to{m}"
    r = _reshard(src, dst, m)
    assert r.exit_code == 0, r.output
    got = _resumed(dst, m, 2, optim="adafactor")
    del got["loss_after_step"], reference["loss_after_step"]
    assert got == reference


def _consolidated_equal(src: Path, dst: Path) -> None:
    """ckptdoctor's own diff: the consolidated weights (what zero_to_fp32 would rebuild from
    the partitions) of the original and the resharded checkpoint are bit-identical, and the
    checkpoints differ only in per-rank optimizer entries and the world size."""
    from ckptdoctor.diff import Section, diff

    rep = diff(src, dst)
    weights = [t for t in rep.tensors if t.section is Section.WEIGHTS]
    assert len(weights) == 4 and all(t.equal for t in weights), [t.key for t in weights]
    assert not rep.only_a.get(Section.WEIGHTS) and not rep.only_b.get(Section.WEIGHTS)
    assert not rep.renames


@pytest.mark.parametrize("n,m,sub_group,bf16", [(2, 1, None, False), (2, 3, None, False),
                                                # longer matrix (make oracle): 1 -> 2 (ZeRO-2
                                                # covers it in CI), sub-groups, bf16
                                                pytest.param(1, 2, None, False,
                                                             marks=pytest.mark.oracle),
                                                pytest.param(2, 1, 20, False,
                                                             marks=pytest.mark.oracle),
                                                pytest.param(2, 3, 20, False,
                                                             marks=pytest.mark.oracle),
                                                pytest.param(2, 3, None, True,
                                                             marks=pytest.mark.oracle)])
def test_resharded_zero3_resumes_with_equal_state_and_loss(saved, tmp_path, n, m, sub_group,
                                                           bf16):
    """ZeRO-3 partitions each parameter on its own (ceil(numel / world) per rank). With
    sub_group_size 20 the sub-groups themselves change with the world size (2 ranks: [w0, b0],
    [w2, b2]; 1 rank: [w0], [b0, w2], [b2]; 3 ranks: [w0, b0, w2], [b2])."""
    src, reference = saved[(3, n, bf16, sub_group)]
    dst = tmp_path / f"z3_dp{n}_to_{m}"
    r = _reshard(src, dst, m)
    assert r.exit_code == 0, r.output
    assert "CK736" in r.output and "ZeRO-3" in r.output and f"{n} -> {m} ranks" in r.output
    tag = (dst / "latest").read_text()
    for kind, prefix in (("optim", "bf16_zero" if bf16 else "zero"), ("model", "zero")):
        assert sorted(p.name for p in (dst / tag).glob(f"*_{kind}_states.pt")) == [
            f"{prefix}_pp_rank_{k}_mp_rank_00_{kind}_states.pt" for k in range(m)]
    assert runner.invoke(app, ["validate", str(dst)]).exit_code == 0
    got = _resumed(dst, m, 3, bf16, sub_group)
    assert got == reference  # exact: every parameter's fp32, exp_avg, exp_avg_sq; steps; losses
    assert len(reference["loss"]) == 1 and reference["param_steps"] == {3.0}
    assert {k: len(v["fp32"]) for k, v in reference["params"].items()} == {
        "0.weight": 35, "0.bias": 7, "2.weight": 21, "2.bias": 3}
    _consolidated_equal(src, dst)


def test_without_reshard_deepspeed_refuses_the_new_world_size(saved):
    src, _ = saved[(2, 2, False)]
    with pytest.raises(AssertionError, match="DP world size of 2"):
        _launch(1, "resume", src)


def test_per_rank_state_is_reported_or_refused_with_strict(saved, tmp_path):
    src, _ = saved[(2, 2, False)]
    ckpt = tmp_path / "ckpt"
    import shutil

    shutil.copytree(src, ckpt)
    # Give rank 1 a value of its own (DeepSpeed writes none for ZeRO-2, so the file is edited
    # with torch itself, in a child process that imports deepspeed for its safe globals).
    code = ("import torch, sys\n"
            "from deepspeed.runtime.fp16.loss_scaler import LossScaler\n"
            "from deepspeed.runtime.zero.config import ZeroStageEnum\n"
            "from deepspeed.utils.tensor_fragment import fragment_address\n"
            "p = sys.argv[1]\n"
            "with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, "
            "fragment_address]):\n"
            "    sd = torch.load(p, weights_only=True)\n"
            "sd['optimizer_state_dict']['clip_grad'] = 0.5\n"
            "sd['optimizer_state_dict']['base_optimizer_state']['state'][0]['step'] += 1\n"
            "torch.save(sd, p)\n")
    rank1 = next(ckpt.glob("global_step*/zero_pp_rank_1_*_optim_states.pt"))
    proc = subprocess.run([sys.executable, "-c", code, str(rank1)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _reshard(ckpt, tmp_path / "strict", 1, "--strict")
    assert r.exit_code == 1 and "CK734" in r.output and "clip_grad" in r.output
    assert not (tmp_path / "strict").exists()
    r = _reshard(ckpt, tmp_path / "lenient", 1)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "CK735" in text and "optimizer_state_dict.clip_grad" in text
    assert "optimizer_state_dict.base_optimizer_state.state.0.step" in text


def test_alignment_paddings_that_do_not_match_the_parameters_are_refused(saved, tmp_path):
    """Rank 0's `param_alignment_paddings` (read from the file, not trusted) with one entry
    more than the group has parameters: refused as CK734, not split along a truncated zip."""
    src, _ = saved[(2, 2, False)]
    ckpt = tmp_path / "ckpt"
    import shutil

    shutil.copytree(src, ckpt)
    code = ("import torch, sys\n"
            "from deepspeed.runtime.fp16.loss_scaler import LossScaler\n"
            "from deepspeed.runtime.zero.config import ZeroStageEnum\n"
            "from deepspeed.utils.tensor_fragment import fragment_address\n"
            "p = sys.argv[1]\n"
            "with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, "
            "fragment_address]):\n"
            "    sd = torch.load(p, weights_only=True)\n"
            "osd = sd['optimizer_state_dict']\n"
            "pads = osd.get('param_alignment_paddings')\n"
            "osd['param_alignment_paddings'] = ([list(q) + [0] for q in pads] if pads else\n"
            "    [[] for _ in osd['single_partition_of_fp32_groups']])\n"
            "torch.save(sd, p)\n")
    rank0 = next(ckpt.glob("global_step*/zero_pp_rank_0_*_optim_states.pt"))
    proc = subprocess.run([sys.executable, "-c", code, str(rank0)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _reshard(ckpt, tmp_path / "out", 1)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "CK734" in text and "alignment paddings for" in text, r.output
    assert not (tmp_path / "out").exists()


def test_reshard_refuses_what_it_cannot_do(saved, tmp_path):
    src, _ = saved[(2, 2, False)]
    r = _reshard(src, src, 1)
    assert r.exit_code == 1 and "CK734" in r.output
    r = _reshard(src, tmp_path / "x", 0)
    assert r.exit_code == 2 and not (tmp_path / "x").exists()
    torch_file = tmp_path / "plain.pt"
    import torch

    torch.save({"w": torch.zeros(2)}, torch_file)
    r = _reshard(tmp_path, tmp_path / "y", 1)
    assert r.exit_code == 1 and not (tmp_path / "y").exists()


def _zero_to_fp32(ckpt: Path) -> dict:
    """DeepSpeed's own consolidation (utils/zero_to_fp32.py, in a child process), read back
    with weights_only=True."""
    import torch

    job = Path(__file__).parent / "realds" / "ds_job.py"
    proc = subprocess.run([sys.executable, str(job), "fp32", "3", str(ckpt)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(f"{ckpt}.fp32.pt", weights_only=True)


@pytest.mark.oracle  # longer matrix (make oracle)
def test_resharded_zero3_with_frozen_parameters(tmp_path):
    """The first Linear frozen: ZeRO-3 keeps it out of the optimizer, in per-rank
    frozen_param_fragments. Resharded 2 -> 3, DeepSpeed's own zero_to_fp32 rebuilds the same
    full state dict (frozen and trained parameters, bit for bit) from both checkpoints, and
    DeepSpeed resumes the new one on 3 ranks with the same state and losses."""
    import torch

    src = tmp_path / "z3_frozen_dp2"
    _launch(2, "save", src, 3, frozen=True)
    reference = _resumed(src, 2, 3, frozen=True)
    dst = tmp_path / "z3_frozen_to3"
    r = _reshard(src, dst, 3)
    assert r.exit_code == 0, r.output
    a, b = _zero_to_fp32(src), _zero_to_fp32(dst)
    assert sorted(a) == ["0.bias", "0.weight", "2.bias", "2.weight"] and sorted(b) == sorted(a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    got = _resumed(dst, 3, 3, frozen=True)
    assert got == reference and set(reference["params"]) == {"2.weight", "2.bias"}
