"""Repair against the REAL frameworks: a checkpoint that fails to resume before `repair` and
resumes after it, with the same training trajectory / RNG stream.

- HF Trainer: rng_state.pth written by numpy 1.26 (tests/fixtures/numpy1) makes
  `Trainer.train(resume_from_checkpoint=...)` raise; after repair the resumed run logs the
  same losses as an uninterrupted run.
- Lightning: `Trainer.fit(ckpt_path=...)` raises on argparse.Namespace / PosixPath in
  hyper_parameters (torch 2.13 weights_only default); after repair it resumes.
- Accelerate: `load_state` silently skips a numpy-1 random_states_0.pkl; after repair it
  restores the exact numpy stream.
- DeepSpeed and Megatron-LM cannot be installed here: their files are hand-built by
  tests/fixtures/factory.py with torch.save while stand-in modules are registered in
  sys.modules under the real names (deepspeed.runtime.fp16.loss_scaler.LossScaler,
  deepspeed.runtime.zero.config.ZeroStageEnum, deepspeed.utils.tensor_fragment.fragment_address,
  megatron.core.enums.ModelType) during the save only. Repair keeps the objects those
  frameworks need as objects and writes the allow-list; the files then load with exactly it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptdoctor.loaders import load_with_chain
from ckptdoctor.repair import render_result, repair
from ckptdoctor.repair.allowlist import ALLOWLIST_FILE, SNIPPET_FILE

try:
    from tests.fixtures import factory as F
except ImportError:
    from fixtures import factory as F

NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"


def numpy1_rng_state() -> dict:
    """The numpy-1 fixture read through the loader chain (real numpy objects, aliased names):
    an independent path from repair's conversion."""
    return load_with_chain(NUMPY1 / "rng_state.pth").obj


@pytest.fixture()
def clean_safe_globals():
    yield
    torch.serialization.clear_safe_globals()


# --- HF Trainer -----------------------------------------------------------------------------------
def test_hf_trainer_numpy1_rng_state_resumes_with_same_losses(tmp_path):
    from transformers import TrainerCallback

    fixture = numpy1_rng_state()

    class InjectFixtureRng(TrainerCallback):
        """The uninterrupted reference: after step 2 the process RNGs hold exactly the state in
        the numpy-1 rng_state.pth, as they do when the resumed run restores it."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                import random

                random.setstate(fixture["python"])
                np.random.set_state(fixture["numpy"])
                torch.random.set_rng_state(fixture["cpu"])
            return control

    ref = F.build_trainer(tmp_path / "ref", steps=4, save_steps=2, seed=0)
    ref.add_callback(InjectFixtureRng())
    ref.train()
    reference = {h["step"]: float(h["loss"]) for h in ref.state.log_history if "loss" in h}
    assert sorted(reference) == [1, 2, 3, 4]

    run = tmp_path / "run"
    F.run_hf_trainer(run, steps=4, save_steps=2, stop_after=2, seed=0)  # "crash" after step 2
    ck = run / "checkpoint-2"
    shutil.copy2(NUMPY1 / "rng_state.pth", ck / "rng_state.pth")  # written under numpy 1.26
    shutil.copy2(NUMPY1 / "training_args.bin", ck / "training_args.bin")
    with pytest.raises(pickle.UnpicklingError, match="numpy.core.multiarray"):
        F.run_hf_trainer(run, steps=4, save_steps=2, seed=0, resume_from_checkpoint=ck)

    result = repair(run)  # the run directory; consumer = the Trainer's own resume
    assert result.exit_code == 0, render_result(result)
    assert [o.rel for o in result.outcomes] == ["checkpoint-2/rng_state.pth"]
    assert result.outcomes[0].status == "replaced"
    # training_args.bin is never read on resume: the framework consumer leaves it alone
    assert (ck / "training_args.bin").read_bytes() == (NUMPY1 / "training_args.bin").read_bytes()

    resumed = F.run_hf_trainer(run, steps=4, save_steps=2, seed=0, resume_from_checkpoint=ck).losses
    assert resumed == reference


# --- Lightning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["init_arg", "save_hyperparameters"])
def test_lightning_fit_resumes_after_repair(tmp_path, via):
    ckpt = F.make_lightning_ckpt(tmp_path / "fit", namespace_via=via)
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace|pathlib.PosixPath"):
        F.lightning_resume(ckpt, tmp_path / "before", namespace_via=via)
    result = repair(ckpt.parent)
    assert result.exit_code == 0, render_result(result)
    assert {o.rel for o in result.outcomes} == {"last.ckpt", "epoch=0-step=4.ckpt"}
    sd = torch.load(ckpt, weights_only=True)
    hp = sd["hyper_parameters"]
    args = hp["args"] if via == "init_arg" else hp
    assert args["data_dir"] == "/tmp/x" and args["lr"] == 0.01
    trainer = F.lightning_resume(ckpt, tmp_path / "after", namespace_via=via)
    assert trainer.global_step == 8


def test_lightning_omegaconf_hparams(tmp_path):
    """DictConfig hyper-parameters + hparams_type (a class object) in a real Lightning file."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    class M(pl.LightningModule):
        def __init__(self, cfg):
            super().__init__()
            self.save_hyperparameters(cfg)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, i):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = OmegaConf.create({"lr": 0.1, "opt": {"lr": "${lr}"}})
    ds = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    tr = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path))
    tr.fit(M(cfg), torch.utils.data.DataLoader(ds, batch_size=4))
    ckpt = tmp_path / "m.ckpt"
    tr.save_checkpoint(ckpt)
    assert (
        "omegaconf.dictconfig.DictConfig"
        in torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
    )
    result = repair(ckpt)
    assert result.exit_code == 0, render_result(result)
    sd = torch.load(ckpt, weights_only=True)
    assert sd["hyper_parameters"] == {"lr": 0.1, "opt": {"lr": 0.1}}
    assert sd["hparams_type"] == "omegaconf.dictconfig.DictConfig"
    tr2 = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path))
    tr2.fit(M(cfg), torch.utils.data.DataLoader(ds, batch_size=4), ckpt_path=str(ckpt))
    assert tr2.global_step == 4


# --- Accelerate -----------------------------------------------------------------------------------
def test_accelerate_load_state_restores_numpy_stream(tmp_path):
    d = F.make_accelerate_state(tmp_path / "acc")
    shutil.copy2(NUMPY1 / "random_states_0.pkl", d / "random_states_0.pkl")
    state = load_with_chain(NUMPY1 / "random_states_0.pkl").obj["numpy_random_seed"]
    saved = np.random.get_state()
    np.random.set_state(state)
    expected = np.random.rand(5)
    np.random.set_state(saved)
    # accelerate logs "Could not load random states" at info level and carries on
    assert not np.array_equal(F.accelerate_load_draws(d), expected)
    result = repair(d)
    assert result.exit_code == 0, render_result(result)
    assert [o.rel for o in result.outcomes] == ["random_states_0.pkl"]
    assert np.array_equal(F.accelerate_load_draws(d), expected)


# --- DeepSpeed (hand-built, see module docstring) -------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_optim_states_get_allowlist(tmp_path, stage, clean_safe_globals):
    d = F.make_deepspeed(tmp_path / "ds", stage=stage)
    optim_files = sorted(d.glob("global_step5/*optim_states.pt"))
    result = repair(d, consumer="torch")
    assert result.exit_code == 0, render_result(result)
    doc = json.loads((d / ALLOWLIST_FILE).read_text())
    assert set(doc["allowlist"]) >= {"deepspeed.runtime.fp16.loss_scaler.LossScaler"}
    assert "ZeroStageEnum" not in json.dumps(doc)  # converted to int, not allow-listed
    assert "safe_globals" in result.snippet and "LossScaler" in result.snippet
    for f in optim_files:
        rel = f.relative_to(d).as_posix()
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f))) <= set(
            doc["files"][rel]["allowlist"]
        )
        with pytest.raises(pickle.UnpicklingError):
            torch.load(f, weights_only=True)  # the kept objects still need the allow-list
    with F.deepspeed_stub_modules():
        exec((d / SNIPPET_FILE).read_text(), {"__file__": str(d / SNIPPET_FILE)})  # vets, registers
        for f in optim_files:
            osd = torch.load(f, weights_only=True)["optimizer_state_dict"]
            assert osd["zero_stage"] == stage and type(osd["zero_stage"]) is int
            assert (
                type(osd["loss_scaler"]).__name__ == "LossScaler"
                and osd["loss_scaler"].cur_scale == 1.0
            )
    again = repair(d, consumer="torch")
    assert again.backup_dir == "" and not again.plan.writes


# --- Megatron (hand-built, see module docstring) --------------------------------------------------
def test_megatron_keeps_args_namespace_and_enum(tmp_path, clean_safe_globals):
    d = F.make_megatron(tmp_path / "mg")
    f = d / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt"
    result = repair(d, consumer="torch")
    assert result.exit_code == 0, render_result(result)
    doc = json.loads((d / ALLOWLIST_FILE).read_text())
    assert doc["allowlist"] == ["argparse.Namespace", "megatron.core.enums.ModelType"]
    with F.megatron_stub_modules():
        exec((d / SNIPPET_FILE).read_text(), {"__file__": str(d / SNIPPET_FILE)})
        ck = torch.load(f, weights_only=True)
        from megatron.core.enums import ModelType

        # getattr works: still a Namespace
        assert ck["args"].model_type is ModelType.encoder_or_decoder
        assert ck["args"].params_dtype is torch.bfloat16
    np.random.set_state(ck["rng_state"][0]["np_rng_state"])  # Megatron's own restore call
