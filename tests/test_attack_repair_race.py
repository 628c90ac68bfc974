"""Adversarial review of select -> plan -> apply (repair/engine.py): the files a plan was made
from change between `prepare_repair` and `apply_repair`. apply_repair promises: "A file that
changed since it was planned is not touched (its outcome says so)". Checkpoints are written by
torch.save and by the real numpy-1 fixtures; the crash hook is the engine's own test hook."""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ckptdoctor.repair import apply_repair, prepare_repair
from ckptdoctor.repair.engine import CRASH_ENV
from ckptdoctor.repair.model import ALLOWLIST, REWRITE, SAFETENSORS

REPO = Path(__file__).resolve().parent.parent
NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _two_broken(d: Path) -> Path:
    d.mkdir(parents=True)
    shutil.copy(NUMPY1 / "rng_state.pth", d / "rng_state.pth")
    shutil.copy(NUMPY1 / "numpy_scalars.pt", d / "numpy_scalars.pt")
    return d


def test_a_planned_file_deleted_before_apply_is_an_outcome_not_an_exception(tmp_path):
    """Before: apply_repair raised FileNotFoundError from the stat check, after it had already
    replaced the other planned file, leaving its backup session marked incomplete."""
    d = _two_broken(tmp_path / "ck")
    prepared = prepare_repair(d, consumer="torch")
    assert sorted(f.rel for f in prepared.plan.files if f.action == REWRITE) == [
        "numpy_scalars.pt", "rng_state.pth"]
    (d / "rng_state.pth").unlink()
    result = apply_repair(prepared)
    assert result.exit_code == 1
    gone = result.outcome("rng_state.pth")
    assert gone is not None and gone.status == "refused" and "changed" in gone.message
    assert result.outcome("numpy_scalars.pt").status == "replaced"
    assert not (d / "rng_state.pth").exists()  # nothing recreated in its place
    torch.load(d / "numpy_scalars.pt", weights_only=True)
    manifest = json.loads((Path(result.backup_dir) / "manifest.json").read_text())
    assert manifest["complete"] is True  # the session was finished, not abandoned mid-run
    assert [e["rel"] for e in manifest["files"]] == ["numpy_scalars.pt"]


def test_a_planned_file_swapped_for_a_symlink_before_apply_is_not_rewritten(tmp_path):
    """The planned regular file is moved outside the checkpoint and a symlink to it put in
    its place: same inode, size and mtime through stat(). Before: apply backed the outside
    file up through the link and replaced the link with the rewritten file."""
    d = _two_broken(tmp_path / "ck")
    prepared = prepare_repair(d, consumer="torch")
    outside = tmp_path / "outside.pth"
    shutil.move(d / "rng_state.pth", outside)
    os.symlink(outside, d / "rng_state.pth")
    before = _sha(outside)
    result = apply_repair(prepared)
    assert result.outcome("rng_state.pth").status == "refused"
    assert os.path.islink(d / "rng_state.pth") and os.readlink(d / "rng_state.pth") == str(outside)
    assert _sha(outside) == before
    assert result.outcome("numpy_scalars.pt").status == "replaced"


def test_finishing_an_interrupted_safetensors_conversion_never_deletes_a_newer_file(tmp_path):
    """A run converting pytorch_model.bin -> model.safetensors is killed after the commit; the
    next plan says only removing the original is left. If a new pytorch_model.bin is saved
    before apply, it is not the original that was backed up: before, apply deleted it (data
    loss, nothing of it kept anywhere)."""
    d = tmp_path / "m"
    d.mkdir()
    torch.save({"w": torch.randn(3, 3)}, d / "pytorch_model.bin")
    env = dict(os.environ, PYTHONPATH=str(REPO), **{CRASH_ENV: "committed"})
    code = "import sys; from ckptdoctor.repair import repair; repair(sys.argv[1], to='safetensors')"
    assert subprocess.run([sys.executable, "-c", code, str(d)], env=env).returncode == 137
    prepared = prepare_repair(d, to="safetensors")
    assert [f.action for f in prepared.plan.files] == [SAFETENSORS]
    assert "interrupted" in prepared.plan.files[0].reason
    torch.save({"w": torch.zeros(5)}, d / "pytorch_model.bin")  # a newer save lands
    newer = (d / "pytorch_model.bin").read_bytes()
    result = apply_repair(prepared)
    assert (d / "pytorch_model.bin").read_bytes() == newer
    assert result.exit_code == 1 and result.outcome("pytorch_model.bin").status == "refused"


@pytest.fixture()
def phase_module():
    """A user enum (unknown to ckptdoctor, vouched for with allow=): its file's only fix is an
    allow-list entry, nothing is converted."""
    mod = types.ModuleType("ckpt_attack_enums")

    class Phase(enum.Enum):
        TRAIN = 1
        EVAL = 2

    Phase.__module__ = mod.__name__
    Phase.__qualname__ = "Phase"
    mod.Phase = Phase
    sys.modules[mod.__name__] = mod
    yield mod
    sys.modules.pop(mod.__name__, None)
    torch.serialization.clear_safe_globals()


def test_allowlist_only_apply_refuses_a_file_changed_after_planning(tmp_path, phase_module):
    """The ALLOWLIST action recorded the current file's sha256 without checking that the file
    is the one planned (the REWRITE and SAFETENSORS actions do check)."""
    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"p": phase_module.Phase.TRAIN, "w": torch.ones(1)}, d / "u.pt")
    allow = ["ckpt_attack_enums.Phase"]
    prepared = prepare_repair(d, consumer="torch", allow=allow)
    acts = {f.rel: f.action for f in prepared.plan.files}
    assert acts == {"u.pt": ALLOWLIST}, acts
    torch.save({"p": phase_module.Phase.EVAL, "w": torch.ones(1)}, d / "u.pt")  # re-saved
    result = apply_repair(prepared)
    assert result.outcome("u.pt").status == "refused"
    assert "changed" in result.outcome("u.pt").message
    assert not (d / "ckptdoctor-allowlist.json").exists()
