"""Real DeepSpeed (installed with DS_BUILD_OPS=0, CPU, gloo): a ZeRO-2 checkpoint written by
`engine.save_checkpoint` is inspected and validated, consolidated by `ckptdoctor convert`
exactly as DeepSpeed's own zero_to_fp32 does, and after `ckptdoctor repair --consumer torch`
DeepSpeed's own `load_checkpoint` still works, also with weights_only forced on and the
allow-list file repair wrote. Skipped where deepspeed does not import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.loaders import safe_load
from tests.ranks import launch

pytest.importorskip("deepspeed", reason="deepspeed is not installed")

JOB = Path(__file__).parent / "realds" / "ds_job.py"
runner = CliRunner()


def _job(mode: str, ckpt: Path, **env) -> str:
    """`mode` on one real rank; its stdout."""
    return launch(JOB, mode, 2, ckpt, world=1, env=env, timeout=600)[0]


@pytest.fixture(scope="module")
def ds_ckpt(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ds") / "ckpt"
    _job("save", ckpt)
    return ckpt


def test_inspect_and_validate_real_deepspeed(ds_ckpt):
    doc = json.loads(runner.invoke(app, ["inspect", "--json", str(ds_ckpt)]).stdout)
    assert doc["layout"]["name"] == "deepspeed" and doc["layout"]["step"] == 3
    assert doc["layout"]["zero_stage"] == 2
    optim = next(f for f in doc["files"] if f["path"].endswith("optim_states.pt"))
    assert "deepspeed.runtime.zero.config.ZeroStageEnum" in optim["weights_only"]["allowlist"]
    assert runner.invoke(app, ["validate", str(ds_ckpt)]).exit_code == 0  # DS >= 0.16 loads it
    r = runner.invoke(app, ["validate", "--consumer", "torch", "--format", "json", str(ds_ckpt)])
    assert r.exit_code == 1
    assert any(f["code"] == "CK601" for f in json.loads(r.stdout)["findings"])


def test_convert_equals_deepspeed_zero_to_fp32(ds_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ds_ckpt, ckpt)
    _job("fp32", ckpt)  # DeepSpeed's own consolidation of the file the test itself wrote
    reference = torch.load(str(ckpt) + ".fp32.pt", weights_only=True)
    out = tmp_path / "model.safetensors"
    r = runner.invoke(app, ["convert", str(ckpt), str(out), "--to", "safetensors"])
    assert r.exit_code == 0, r.output
    ours = load_file(out)
    assert set(ours) == set(reference)
    for name, ref in reference.items():
        assert ours[name].dtype == ref.dtype and torch.equal(ours[name], ref), name


def test_deepspeed_still_loads_after_repair(ds_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ds_ckpt, ckpt)
    r = runner.invoke(app, ["repair", "--yes", "--consumer", "torch", str(ckpt)])
    assert r.exit_code == 0, r.output
    snippet = ckpt / "ckptdoctor_safe_globals.py"
    assert snippet.is_file() and (ckpt / "ckptdoctor-allowlist.json").is_file()
    assert "LOADED step 3" in _job("load", ckpt)  # DeepSpeed's own loader
    # as an engine that loads with weights_only=True would: only the written allow-list helps
    forced = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    assert "LOADED step 3" in _job("load", ckpt, CKPTDOCTOR_SAFE_GLOBALS=str(snippet),
                                   **forced)
    with pytest.raises(AssertionError):
        _job("load", ds_ckpt, **forced)  # the original fails that way


def _job_ranks(mode: str, ckpt: Path, world: int, **env) -> None:
    """`mode` on `world` real ranks: one process per rank, gloo on localhost."""
    launch(JOB, mode, 2, ckpt, world=world, env=env, timeout=600)


@pytest.fixture(scope="module")
def ds_two_ranks_frozen(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ds2") / "ckpt"
    _job_ranks("save", ckpt, 2, CKPTDOCTOR_DS_FROZEN="1")
    return ckpt


def test_convert_two_ranks_with_a_frozen_layer(ds_two_ranks_frozen, tmp_path):
    """Two real ZeRO-2 ranks, first Linear frozen. Catches: rank order reversed when gathering
    the fp32 partitions; frozen parameters (frozen_param_fragments) written as zeros. The oracle
    is DeepSpeed's own zero_to_fp32 and the weights the engine held when it saved."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ds_two_ranks_frozen, ckpt)
    optim = sorted(p.name for p in ckpt.glob("*/*optim_states.pt"))
    assert len(optim) == 2 and "rank_0" in optim[0] and "rank_1" in optim[1]
    model_states = safe_load(next(ckpt.glob("*/*rank_0*model_states.pt")))
    assert set(model_states["frozen_param_shapes"]) == {"0.weight", "0.bias"}
    _job("fp32", ckpt)
    reference = torch.load(str(ckpt) + ".fp32.pt", weights_only=True)
    live = torch.load(str(ds_two_ranks_frozen) + ".live.pt", weights_only=True)
    out = tmp_path / "model.safetensors"
    r = runner.invoke(app, ["convert", str(ckpt), str(out), "--to", "safetensors"])
    assert r.exit_code == 0, r.output
    ours = load_file(out)
    assert set(ours) == set(reference) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, ref in reference.items():
        assert ours[name].dtype == ref.dtype and torch.equal(ours[name], ref), name
    for name in ("0.weight", "0.bias"):  # frozen: what the module held, never zeros
        assert ours[name].abs().sum() > 0
        assert torch.equal(ours[name].to(live[name].dtype), live[name]), name
    for name in ("2.weight", "2.bias"):  # trained: the fp32 master, bf16 copy in the module
        assert torch.equal(ours[name].bfloat16(), live[name].bfloat16()), name
