"""validate on damaged copies of real checkpoints, and `latest` on a run cut short.

Each damage is what a real failure leaves behind (an OOM kill mid-save, a rank that never
wrote, a flipped bit on disk, a hostile file); the checkpoints are written by the real
transformers Trainer / DeepSpeed layout builders in tests/fixtures/factory.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoctor.cli import app
from tests.fixtures import factory as fx

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fx.make_hf_trainer_run(tmp_path_factory.mktemp("run") / "out", steps=4, save_steps=2)


@pytest.fixture()
def ckpt(run, tmp_path):
    dst = tmp_path / "checkpoint-4"
    shutil.copytree(run / "checkpoint-4", dst)
    return dst


def validate(path, *args):
    r = runner.invoke(app, ["validate", "--format", "json", *map(str, args), str(path)])
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    return r.exit_code, {(f["code"], f["path"]) for f in doc["findings"]}, doc


def test_clean_checkpoint_passes(ckpt):
    rc, found, doc = validate(ckpt)
    assert rc == 0, found
    assert doc["layout"]["name"] == "hf-trainer" and doc["layout"]["step"] == 4


def truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, code, where", [
    (lambda c: truncate(c / "model.safetensors"), "CK305", "model.safetensors"),
    (lambda c: truncate(c / "optimizer.pt"), "CK201", "optimizer.pt"),
    (lambda c: (c / "scheduler.pt").write_bytes(b""), "CK003", "scheduler.pt"),
    # the resume goes on without these, but from different state (fresh RNG under gpt2's
    # dropout, fresh optimizer + scheduler): measured by tests/oracle, so errors
    (lambda c: (c / "rng_state.pth").unlink(), "CK401", "rng_state.pth"),
    (lambda c: (c / "trainer_state.json").unlink(), "CK401", "trainer_state.json"),
    (lambda c: (c / "optimizer.pt").unlink(), "CK401", "optimizer.pt"),
])
def test_damage_is_named(ckpt, damage, code, where):
    damage(ckpt)
    rc, found, _ = validate(ckpt)
    assert (code, where) in found, found
    assert rc == 1


def test_corrupt_header_length_and_offsets(ckpt):
    p = ckpt / "model.safetensors"
    data = bytearray(p.read_bytes())
    p.write_bytes((len(data) * 2).to_bytes(8, "little") + bytes(data[8:]))
    rc, found, _ = validate(ckpt)
    assert rc == 1 and ("CK302", "model.safetensors") in found
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:8 + n]))
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4096  # past the end
    raw = json.dumps(header).encode()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(data[8 + n:]))
    rc, found, _ = validate(ckpt)
    assert rc == 1 and {c for c, _ in found} & {"CK304", "CK305"}


def test_index_naming_a_missing_shard(tmp_path):
    model = fx.make_hf_model(tmp_path / "m", sharded=True)
    shard = sorted(model.glob("model-*.safetensors"))[1]
    shard.unlink()
    rc, found, _ = validate(model)
    assert rc == 1 and ("CK402", shard.name) in found


def test_flipped_byte_in_tensor_data_needs_deep(ckpt):
    p = ckpt / "optimizer.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside tensor data: torch would load it silently
    p.write_bytes(bytes(data))
    assert validate(ckpt)[0] == 0
    rc, found, _ = validate(ckpt, "--deep")
    assert rc == 1 and ("CK204", "optimizer.pt") in found


def test_stray_tmp_dir_is_reported(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    (out / "tmp-checkpoint-6").mkdir()
    rc, found, _ = validate(out)
    assert any(c == "CK406" for c, _ in found)


def test_poisoned_training_args_fails_and_never_runs(ckpt, tmp_path):
    canary = tmp_path / "CANARY"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    import torch

    torch.save({"args": Payload()}, ckpt / "training_args.bin")
    for extra in ((), ("--load",), ("--load", "--trust"), ("--deep",)):
        rc, found, _ = validate(ckpt, *extra)
        assert rc == 1 and ("CK101", "training_args.bin") in found
    assert not canary.exists()


def test_deepspeed_missing_optimizer_shard(tmp_path):
    ds = fx.make_deepspeed(tmp_path / "ds", stage=2)
    next(ds.glob("global_step5/*rank_1*_optim_states.pt")).unlink()
    rc, found, _ = validate(ds)
    assert rc == 1 and any(c == "CK409" for c, _ in found)


def test_latest_skips_the_checkpoint_cut_short(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    truncate(out / "checkpoint-4" / "model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "ckptdoctor", "latest", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "checkpoint-2")
    assert "checkpoint-4" in proc.stderr and "CK305" in proc.stderr
    truncate(out / "checkpoint-2" / "optimizer.pt")
    proc = subprocess.run([sys.executable, "-m", "ckptdoctor", "latest", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""


def test_numpy1_rng_fails_for_trainer_and_passes_with_allow(ckpt):
    shutil.copy(Path(__file__).parent / "fixtures/numpy1/rng_state.pth", ckpt / "rng_state.pth")
    rc, found, doc = validate(ckpt)
    assert rc == 1 and ("CK601", "rng_state.pth") in found
    f = next(f for f in doc["findings"] if f["code"] == "CK601")
    assert "numpy.core.multiarray._reconstruct" in f["detail"]["allowlist"]
    assert (
        '(numpy._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")' in f["hint"]
    )
    rc, found, _ = validate(ckpt, "--allow", "numpy.core.multiarray._reconstruct")
    assert rc == 0, found


def test_files_the_trainer_never_reads_are_warnings(ckpt):
    """Measured by tests/oracle: the Trainer's resume never opens generation_config.json or
    training_args.bin, and ignores a stray staging dir; damage there is at most a warning."""
    (ckpt / "generation_config.json").write_text('{"bos_token_id": ')
    truncate(ckpt / "training_args.bin")
    (ckpt / "tmp-checkpoint-4").mkdir()
    (ckpt / "tmp-checkpoint-4" / "model.safetensors").write_bytes(b"\x00" * 10)
    rc, found, doc = validate(ckpt)
    assert rc == 0, found
    assert {("CK421", "generation_config.json"), ("CK421", "training_args.bin"),
            ("CK406", "tmp-checkpoint-4")} <= found
    assert not any(p.startswith("tmp-checkpoint-4/") for _, p in found)  # contents unjudged
    assert doc["layout"]["name"] == "hf-trainer"
    (ckpt / "generation_config.json").unlink()
    rc, found, _ = validate(ckpt)
    assert rc == 0 and not any(c == "CK401" for c, _ in found), found
