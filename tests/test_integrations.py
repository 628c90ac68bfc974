"""The gate where users already are, each inside the real library on a tiny model: the
transformers Trainer callback, the Lightning callback, the Accelerate hook; plus the
pre-commit hook / GitHub Action definitions and typer's shell completion."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.integrations.core import (
    MARKER,
    CheckpointRejected,
    gate,
    load_rng_state,
    marker_path,
    restore_rng_state,
    save_rng_state,
)
from ckptdoctor.loaders import safe_load
from ckptdoctor.manifest import read as manifest_read  # reads the OMS statement
from ckptdoctor.validate import MANIFEST

try:
    from tests.fixtures import factory as F
except ImportError:
    from fixtures import factory as F

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


# --- transformers -----------------------------------------------------------------------------
def _train(trainer, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer.train(**kw)


def test_trainer_callback_after_save_and_gate(tmp_path, caplog):
    from ckptdoctor.integrations.transformers import CheckpointDoctorCallback

    out = tmp_path / "out"
    cb = CheckpointDoctorCallback(rng_state=True)
    trainer = F.build_trainer(out, steps=4, save_steps=2)
    cb.attach(trainer)
    with caplog.at_level(logging.INFO, logger="ckptdoctor"):
        _train(trainer)
    ckpts = [out / "checkpoint-2", out / "checkpoint-4"]
    assert [r.path for r in cb.records] == [str(c) for c in ckpts] and all(r.ok for r in cb.records)
    lines = [r.getMessage() for r in caplog.records if r.name == "ckptdoctor"]
    assert len(lines) == 2 and all("ok" in line and "checkpoint-" in line for line in lines)
    for ck in ckpts:
        assert json.loads((ck / MARKER).read_text())["step"] == int(ck.name.split("-")[1])
        manifest = manifest_read(ck / MANIFEST)
        # independent: the manifest's hashes are the files' hashes
        assert manifest["model.safetensors"].sha256 == _sha(ck / "model.safetensors")
        assert manifest["optimizer.pt"].sha256 == _sha(ck / "optimizer.pt")
        # the RNG file loads with plain weights_only=True and matches the Trainer's own
        ours = torch.load(ck / "ckptdoctor_rng_state_0.pt", weights_only=True)
        theirs = safe_load(ck / "rng_state.pth")
        assert torch.equal(ours["cpu"], theirs["cpu"])
        assert list(theirs["numpy"][1]) == ours["numpy"][1]

    # gate: a truncated weight file stops train() before the Trainer loads anything
    _truncate(out / "checkpoint-4" / "model.safetensors")
    again = F.build_trainer(out, steps=6, save_steps=2)
    before = {k: v.clone() for k, v in again.model.state_dict().items()}
    cb2 = CheckpointDoctorCallback()
    cb2.attach(again)
    with pytest.raises(CheckpointRejected) as exc:
        _train(again, resume_from_checkpoint=True)
    assert "checkpoint-4" in str(exc.value) and "CK3" in str(exc.value)
    assert all(torch.equal(before[k], v) for k, v in again.model.state_dict().items())
    # a good checkpoint passes the gate and the run resumes from it
    good = F.build_trainer(tmp_path / "out", steps=4, save_steps=2)
    CheckpointDoctorCallback().attach(good)
    _train(good, resume_from_checkpoint=str(out / "checkpoint-2"))
    assert good.state.global_step == 4


# --- Lightning --------------------------------------------------------------------------------
def test_lightning_callback_after_save_and_gate(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from ckptdoctor.integrations.lightning import CheckpointDoctor

    F._silence_lightning()
    doctor = CheckpointDoctor(rng_state=True)
    ckdir = tmp_path / "checkpoints"
    trainer = F._lit_trainer(tmp_path, 2, [ModelCheckpoint(dirpath=ckdir, save_last=True,
                                                           save_top_k=1), doctor])
    with contextlib.redirect_stdout(io.StringIO()):
        pl.seed_everything(0, verbose=False)
        trainer.fit(F._lit_module(False, "init_arg"), F._lit_loader(0))
    ckpts = sorted(ckdir.glob("*.ckpt"))
    assert ckpts and doctor.records and all(r.ok for r in doctor.records)
    for ck in ckpts:  # every surviving checkpoint has a marker recording its bytes
        doc = json.loads(marker_path(ck).read_text())
        assert (doc["sha256"], doc["size"]) == (_sha(ck), ck.stat().st_size)
    markers = sorted(ckdir.glob("*.ckptdoctor-complete.json"))
    assert len(markers) == len(ckpts)  # save_top_k removed old files and their markers
    assert load_rng_state(ckdir)["format"] == "ckptdoctor.rng/1"

    # resume from a good checkpoint works
    last = ckdir / "last.ckpt"
    t2 = F._lit_trainer(tmp_path / "r", 3, [CheckpointDoctor()])
    with contextlib.redirect_stdout(io.StringIO()):
        t2.fit(F._lit_module(False, "init_arg"), F._lit_loader(0), ckpt_path=str(last))
    assert t2.current_epoch == 3
    # a file changed after its save: the marker's sha256 no longer matches -> refused
    bad = tmp_path / "bad.ckpt"
    shutil.copy(last, bad)
    shutil.copy(marker_path(last), marker_path(bad))
    raw = bytearray(bad.read_bytes())
    with zipfile.ZipFile(bad) as zf:  # flip a byte of tensor data: the static scan cannot see it
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[start] ^= 0xFF
    bad.write_bytes(bytes(raw))
    t3 = F._lit_trainer(tmp_path / "r3", 3, [CheckpointDoctor()])
    with pytest.raises(CheckpointRejected) as exc:
        t3.fit(F._lit_module(False, "init_arg"), F._lit_loader(0), ckpt_path=str(bad))
    assert "CK503" in str(exc.value)
    # a truncated file is refused before Lightning reads it
    _truncate(bad)
    t4 = F._lit_trainer(tmp_path / "r4", 3, [CheckpointDoctor()])
    with pytest.raises(CheckpointRejected):
        t4.fit(F._lit_module(False, "init_arg"), F._lit_loader(0), ckpt_path=str(bad))


# --- Accelerate -------------------------------------------------------------------------------
def test_accelerate_attach_after_save_and_gate(tmp_path):
    from accelerate import Accelerator

    from ckptdoctor.integrations.accelerate import attach

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    records = attach(acc, rng_state=True)
    where = Path(acc.save_state(str(tmp_path / "state")))
    assert records and records[0].ok and (where / MARKER).is_file()
    manifest = manifest_read(where / MANIFEST)
    assert manifest["model.safetensors"].sha256 == _sha(where / "model.safetensors")
    w = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    acc.load_state(str(where))  # gated, then Accelerate's own load
    assert all(torch.equal(w[k], v) for k, v in model.state_dict().items())
    _truncate(where / "optimizer.bin")
    with pytest.raises(CheckpointRejected) as exc:
        acc.load_state(str(where))
    assert "optimizer.bin" in str(exc.value)


# --- core -------------------------------------------------------------------------------------
def test_rng_state_round_trip_restores_the_streams(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_rng_state(tmp_path, rank=0)
    expect = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)  # move every stream on
    restore_rng_state(tmp_path, rank=0)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])
    # plain torch.load(weights_only=True), no allow-list: the file holds no numpy object
    torch.load(tmp_path / "ckptdoctor_rng_state_0.pt", weights_only=True)


def test_gate_require_marker(tmp_path):
    from safetensors.torch import save_file

    # not `model.safetensors` alone: that is what an Accelerate save_state killed after its
    # models leaves (measured by tests/oracle: load_state fails), which the gate refuses
    save_file({"w": torch.ones(2)}, tmp_path / "weights.safetensors", metadata={"format": "pt"})
    gate(tmp_path)
    with pytest.raises(CheckpointRejected) as exc:
        gate(tmp_path, require_marker=True)
    assert "CK930" in str(exc.value)
    with pytest.raises(CheckpointRejected):
        gate(tmp_path / "missing")


# --- pre-commit, GitHub Action, completion ------------------------------------------------------
def test_pre_commit_hook_runs_validate_github(tmp_path):
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "ckptdoctor-validate")
    assert hook["entry"].split()[:2] == ["ckptdoctor", "validate"]
    assert "--format github" in hook["entry"] or "--format=github" in hook["entry"]
    # run the hook's command the way pre-commit would (files appended) on a broken file
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _truncate(tmp_path / "model.safetensors", 0.9)
    argv = [sys.executable, "-m", "ckptdoctor", *hook["entry"].split()[1:], *hook.get("args", []),
            str(tmp_path / "model.safetensors")]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and proc.stdout.startswith("::error")


def test_github_action_runs_validate_github():
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    script = "\n".join(s.get("run", "") for s in action["runs"]["steps"])
    assert "ckptdoctor validate" in script and "--format github" in script
    assert "path" in action["inputs"]


def test_shell_completion_is_enabled():
    runner = CliRunner()
    res = runner.invoke(app, ["--help"], prog_name="ckptdoctor")
    assert "--install-completion" in res.output
    # the completion itself: typer answers for a partial command name
    res = runner.invoke(app, [], prog_name="ckptdoctor",
                        env={"_CKPTDOCTOR_COMPLETE": "complete_bash", "COMP_WORDS": "ckptdoctor di",
                             "COMP_CWORD": "1"})
    assert "diff" in res.output


def test_trainer_require_marker_refuses_unchecked_checkpoint(tmp_path):
    """A checkpoint saved without the callback has no completion marker: require_marker
    refuses it; after after_save marks it, the same gate lets the resume through."""
    from ckptdoctor.integrations.core import after_save
    from ckptdoctor.integrations.transformers import CheckpointDoctorCallback

    out = F.make_hf_trainer_run(tmp_path / "out", steps=2, save_steps=2)
    trainer = F.build_trainer(out, steps=4, save_steps=2)
    cb = CheckpointDoctorCallback(require_marker=True)
    cb.attach(trainer)
    with pytest.raises(CheckpointRejected) as exc:
        _train(trainer, resume_from_checkpoint=True)
    assert "CK930" in str(exc.value)
    assert after_save(out / "checkpoint-2").ok
    assert cb.check(True, out) == str(out / "checkpoint-2")
