"""Smoke tests for tests/fixtures/factory.py: every factory writes the files it promises.

The whole file runs in well under a minute on 2 CPU cores (most of it is the one-off
import of transformers / lightning).
"""

from __future__ import annotations

import importlib.util
import io
import json
import pickletools
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from tests.fixtures import factory as f
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fixtures import factory as f


def _globals_of(path: Path) -> set[str]:
    return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def _weights_only_ok(path: Path) -> bool:
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- plain torch


def test_torch_zip(tmp_path):
    p = f.make_torch_zip(tmp_path)
    assert p == tmp_path / "model.pt" and zipfile.is_zipfile(p)
    sd = torch.load(p, weights_only=True)
    assert sd["embed.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()  # tied stays tied
    assert not sd["proj.weight_t"].is_contiguous()
    assert sd["block.weight_bf16"].dtype == torch.bfloat16
    assert (
        sd["proj.row1"].untyped_storage().data_ptr()
        == sd["proj.weight"].untyped_storage().data_ptr()
    )


def test_torch_legacy(tmp_path):
    p = f.make_torch_legacy(tmp_path)
    assert p == tmp_path / "legacy.pt" and not zipfile.is_zipfile(p)
    sd = torch.load(p, weights_only=True)
    ref = f.base_state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_numpy_state(tmp_path):
    p = f.make_numpy_state(tmp_path)
    assert p.name == "with_numpy.pt"
    assert not _weights_only_ok(p)
    assert {"numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar"} <= _globals_of(
        p
    )
    obj = torch.load(p, weights_only=False)
    assert isinstance(obj["best_metric"], np.float64) and isinstance(obj["epoch"], np.int64)


def test_safetensors(tmp_path):
    from safetensors import safe_open

    p = f.make_safetensors(tmp_path)
    with safe_open(str(p), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        assert "block.weight_bf16" in fh.keys()  # noqa: SIM118 - safe_open has keys(), no __iter__/__contains__


# --------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("safe", [True, False])
def test_hf_model(tmp_path, sharded, safe):
    from transformers import LlamaForCausalLM

    d = f.make_hf_model(tmp_path, sharded=sharded, safe=safe)
    files = set(f.tree(d))
    assert {"config.json", "generation_config.json"} <= files
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    if sharded:
        assert f"{stem}.{ext}.index.json" in files
        assert sum(1 for x in files if x.startswith(f"{stem}-0000")) > 1
    else:
        assert f"{stem}.{ext}" in files
    loaded = LlamaForCausalLM.from_pretrained(d)
    ref = f.tiny_llama()
    assert torch.equal(loaded.model.embed_tokens.weight, ref.model.embed_tokens.weight)


def test_hf_trainer_run_files(tmp_path):
    run = f.run_hf_trainer(tmp_path / "run", steps=4, save_steps=2)
    assert [c.name for c in run.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    files = set(f.tree(tmp_path / "run" / "checkpoint-2"))
    assert {"trainer_state.json", "rng_state.pth", "optimizer.pt", "scheduler.pt",
            "training_args.bin",
            "model.safetensors", "config.json"} <= files
    assert sorted(run.losses) == [1, 2, 3, 4]
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_hf_trainer_resume_matches_uninterrupted(tmp_path):
    full = f.train_losses(tmp_path / "a", steps=4, save_steps=2)
    part = f.train_losses(tmp_path / "b", steps=4, save_steps=2, stop_after=2)
    assert sorted(part) == [1, 2] and not (tmp_path / "b" / "checkpoint-4").exists()
    resumed = f.train_losses(tmp_path / "b", steps=4, save_steps=2,
                             resume_from_checkpoint=tmp_path / "b" / "checkpoint-2")
    assert resumed == full


def test_hf_trainer_bin_llama(tmp_path):
    d = f.make_hf_trainer_run(
        tmp_path, steps=2, save_steps=2, save_safetensors=False, model="llama"
    )
    files = set(f.tree(d / "checkpoint-2"))
    assert "pytorch_model.bin" in files and "model.safetensors" not in files


# ------------------------------------------------------------------ accelerate / peft / lightning


def test_accelerate_state_and_rng_roundtrip(tmp_path):
    d, ref = f.accelerate_state_with_reference_draws(tmp_path / "acc")
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= set(
        f.tree(d)
    )
    np.testing.assert_array_equal(f.accelerate_load_draws(d), ref)


@pytest.mark.parametrize("kind", ["ok", "empty", "zero3"])
def test_peft_adapter(tmp_path, kind):
    from safetensors import safe_open

    d = f.make_peft_adapter(tmp_path, empty=kind == "empty", zero3_partitioned=kind == "zero3")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(f.tree(d))
    with safe_open(str(d / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        numels = [fh.get_slice(k).get_shape() for k in keys]
    if kind == "empty":
        assert keys == [] and (d / "adapter_model.safetensors").stat().st_size < 100
    elif kind == "zero3":
        assert keys and all(s == [0] for s in numels)
    else:
        assert len(keys) == 8 and all(s and s[0] > 0 for s in numels)  # 2 layers x q,v x A,B


def test_lightning_namespace_breaks_resume(tmp_path):
    ckpt = f.make_lightning_ckpt(tmp_path / "run")
    assert ckpt == tmp_path / "run" / "checkpoints" / "last.ckpt" and ckpt.is_file()
    assert {"argparse.Namespace", "pathlib.PosixPath"} <= _globals_of(ckpt)
    with pytest.raises(Exception, match="Weights only load failed"):
        f.lightning_resume(ckpt, tmp_path / "resume")


def test_lightning_clean_resumes(tmp_path):
    ckpt = f.make_lightning_ckpt(tmp_path / "run", hparams_namespace=False)
    assert _globals_of(ckpt) == set()
    trainer = f.lightning_resume(ckpt, tmp_path / "resume", hparams_namespace=False)
    assert trainer.global_step == 8


def test_lightning_direct_namespace_pickles_only_path(tmp_path):
    ckpt = f.make_lightning_ckpt(tmp_path, namespace_via="save_hyperparameters")
    assert _globals_of(ckpt) == {"pathlib.PosixPath"}


# -------------------------------------------------------------------- DCP and hand-built layouts


def _dcp_keys(d: Path) -> list[str]:
    import torch.distributed.checkpoint as dcp

    return list(dcp.FileSystemReader(str(d)).read_metadata().state_dict_metadata)


def test_dcp(tmp_path):
    d = f.make_dcp(tmp_path)
    assert set(f.tree(d)) == {".metadata", "__0_0.distcp"}
    keys = _dcp_keys(d)
    assert (
        "train_state.step" in keys and "model.0.weight" in keys and "optim.state.0.exp_avg" in keys
    )


def test_lingua(tmp_path):
    d = f.make_lingua(tmp_path)
    step = "checkpoints/0000000010/"
    assert {step + n for n in (".metadata", "__0_0.distcp", "params.json", "train_state_00000.json",
                               "consolidated/consolidated.pth",
                               "consolidated/params.json")} <= set(f.tree(d))
    ts = json.loads((d / step / "train_state_00000.json").read_text())
    assert (
        ts["step"] == 10 and ts["acc_step"] == 0 and "data_loader_state" in ts and "scheduler" in ts
    )
    assert {k.split(".")[0] for k in _dcp_keys(d / step)} == {"model", "optim"}
    cons = torch.load(d / step / "consolidated/consolidated.pth", weights_only=True)
    assert "tok_embeddings.weight" in cons["model"]


def test_torchtitan(tmp_path):
    d = f.make_torchtitan(tmp_path)
    keys = _dcp_keys(d / "checkpoint" / "step-10")
    tops = {k.split(".")[0] for k in keys}
    assert {"tok_embeddings", "layers", "norm", "output", "optimizer", "lr_scheduler", "dataloader",
            "train_state"} == tops
    assert "train_state.step" in keys and "dataloader.dp_rank_0" in keys


def test_megatron_torch(tmp_path):
    d = f.make_megatron(tmp_path, fmt="torch")
    assert (d / "latest_checkpointed_iteration.txt").read_text() == "100"
    p = d / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt"
    assert {"argparse.Namespace", "megatron.core.enums.ModelType",
            "numpy._core.multiarray._reconstruct"} <= _globals_of(p)
    if importlib.util.find_spec("megatron") is None:
        assert "megatron" not in sys.modules  # stand-in removed after saving
    with f.megatron_stub_modules():
        ck = torch.load(p, weights_only=False)
    assert ck["checkpoint_version"] == 3.0 and ck["iteration"] == 100
    assert set(ck["rng_state"][0]) == {"random_rng_state", "np_rng_state", "torch_rng_state",
                                       "cuda_rng_state", "rng_tracker_states"}


def test_megatron_local_enum(tmp_path):
    p = (
        f.make_megatron(tmp_path, real_enum_module=False)
        / "iter_0000100/mp_rank_00/model_optim_rng.pt"
    )
    assert any(g.endswith("factory.ModelType") for g in _globals_of(p))
    assert torch.load(p, weights_only=False)["args"].model_type is f.ModelType.encoder_or_decoder


def test_megatron_torch_dist(tmp_path):
    d = f.make_megatron(tmp_path, fmt="torch_dist")
    it = d / "iter_0000100"
    assert {".metadata", "__0_0.distcp", "metadata.json", "common.pt"} <= set(f.tree(it))
    assert json.loads((it / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert "rng_state/shard_0.0_1.1" in _dcp_keys(it)


def test_llama_recipes(tmp_path):
    d = f.make_llama_recipes_fsdp(tmp_path)
    assert d == tmp_path / "fine-tuned-tiny-llama"
    assert {".metadata", "__0_0.distcp", "train_params.yaml"} <= set(f.tree(d))
    assert {k.split(".")[0] for k in _dcp_keys(d)} == {"model"}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed(tmp_path, stage):
    d = f.make_deepspeed(tmp_path, stage=stage)
    if importlib.util.find_spec("deepspeed") is None:
        assert "deepspeed" not in sys.modules  # stand-ins were removed again
    assert (d / "latest").read_text() == "global_step5" and (d / "zero_to_fp32.py").is_file()
    files = set(f.tree(d))
    if stage == 3:
        assert {
            f"global_step5/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)
        } <= files
    else:
        assert "global_step5/mp_rank_00_model_states.pt" in files
    optim_files = [
        d / f"global_step5/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)
    ]
    assert all(p.is_file() for p in optim_files)
    assert {"deepspeed.runtime.fp16.loss_scaler.LossScaler",
            "deepspeed.runtime.zero.config.ZeroStageEnum"} <= _globals_of(optim_files[0])

    # consolidate by hand (what zero_to_fp32 does) and compare with the original weights
    expected = f.deepspeed_expected_state_dict(d, stage=stage)
    with f.deepspeed_stub_modules():
        osds = [torch.load(p, weights_only=False)["optimizer_state_dict"] for p in optim_files]
    model_states = torch.load(sorted(d.glob("global_step5/*model_states.pt"))[0], weights_only=True)
    shapes = model_states["param_shapes"][0]
    got = {}
    if stage <= 2:
        flat = torch.cat([o["single_partition_of_fp32_groups"][0] for o in osds])
        off = 0
        for name, shape in shapes.items():
            got[name] = flat[off:off + shape.numel()].view(shape)
            off += shape.numel()
    else:
        flats = [o["fp32_flat_groups"][0] for o in osds]
        off = 0
        for name, shape in shapes.items():
            pn = -(-shape.numel() // len(flats))
            got[name] = torch.cat([fl[off:off + pn] for fl in flats])[: shape.numel()].view(shape)
            off += pn
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- numpy 1.x fixtures


def test_numpy1_fixtures_checked_in():
    d = f.make_numpy1_fixtures()
    for name in ("rng_state.pth", "random_states_0.pkl", "numpy_scalars.pt", "training_args.bin"):
        assert (d / name).stat().st_size < 200_000
    out = io.StringIO()
    pickletools.dis(zipfile.ZipFile(d / "rng_state.pth").read("rng_state/data.pkl"), out=out)
    assert "numpy.core.multiarray _reconstruct" in out.getvalue()
    assert "numpy.core.multiarray.scalar" in _globals_of(d / "numpy_scalars.pt")
