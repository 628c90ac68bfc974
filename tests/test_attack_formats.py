"""Adversarial review of the format readers: damaged files that a reader waved through as
resumable. Healthy checkpoints are written by the real libraries (DCP's own save) on tiny
tensors; the damage is written by hand where noted, since no library writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
ENV.pop("CKPTDOCTOR_DEBUG", None)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([PY, "-m", "ckptdoctor", *args], capture_output=True, text=True,
                       timeout=600, env=ENV, cwd=cwd, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    return r


def _dcp_checkpoint(d: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(6, dtype=torch.float32)}}
    dcp.save(state, checkpoint_id=str(d), no_dist=True)
    return d


def _dcp_loads(d: Path) -> bool:
    import torch.distributed.checkpoint as dcp

    target = {"model": {"w": torch.zeros(6)}}
    try:
        dcp.load(target, checkpoint_id=str(d), no_dist=True)
    except BaseException:  # DCP raises CheckpointException (a BaseException)
        return False
    return bool(torch.equal(target["model"]["w"], torch.arange(6, dtype=torch.float32)))


# Hand-written damage: bytes no writer produces, the first one not a pickle PROTO (0x80).
GARBAGE = [b"/Bl\x9f<L\x8b\xf1Yoeh" * 300, b"not a pickle at all\n", b"\x00" * 64]


@pytest.mark.parametrize("garbage", GARBAGE, ids=["noise", "text", "zeros"])
def test_dcp_metadata_that_is_not_a_pickle_is_not_resumable(tmp_path, garbage):
    """Before: a .metadata not starting with 0x80 was sniffed as an `unknown` file with no
    finding, and `validate` said `OK: resumable` (and `latest` picked it) for a checkpoint
    dcp.load cannot read."""
    d = _dcp_checkpoint(tmp_path / "ck")
    assert _dcp_loads(d)  # the healthy one loads, and validate agrees
    assert cli("validate", str(d), cwd=tmp_path).returncode == 0
    (d / ".metadata").write_bytes(garbage)
    assert not _dcp_loads(d)  # DCP itself cannot read it
    r = cli("validate", str(d), "--format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:]
    doc = json.loads(r.stdout)
    assert "CK802" in {f["code"] for f in doc["findings"]}
    run = tmp_path / "run"
    run.mkdir()
    (d).rename(run / "checkpoint-1")
    r = cli("latest", str(run), cwd=tmp_path)
    assert r.returncode == 1 and r.stdout.strip() == ""
