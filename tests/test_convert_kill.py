"""convert killed with SIGKILL at many points: the destination is absent or complete and
bit-identical, the source is untouched, and validate reports the leftover temp file (CK703)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def test_sigkill_at_many_points(tmp_path):
    src = tmp_path / "src.pt"
    torch.manual_seed(0)
    sd = {f"layer{i}.weight": torch.randn(512, 1024) for i in range(24)}  # ~50 MB
    torch.save(sd, src)
    src_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outcomes = set()
    for i, delay in enumerate([0.05, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.2, 2.6, 3.0, 3.5, 4.5]):
        dst = out_dir / f"model{i}.safetensors"
        proc = subprocess.Popen([sys.executable, "-m", "ckptdoctor", "convert", str(src),
                                 str(dst), "--to", "safetensors"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if dst.exists():  # renamed into place only after verification: must be whole
            got = load_file(dst)
            assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
            outcomes.add("complete")
        else:
            outcomes.add("absent")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == src_hash
    leftovers = [p for p in out_dir.iterdir() if p.name.startswith(".ckptdoctor-tmp-")]
    if leftovers:
        r = subprocess.run([sys.executable, "-m", "ckptdoctor", "validate", "--format", "json",
                            str(out_dir)], capture_output=True, text=True, cwd=REPO)
        codes = {f["code"] for f in json.loads(r.stdout)["findings"]}
        assert "CK703" in codes
    # and a run that is not killed completes
    final = out_dir / "final.safetensors"
    r = subprocess.run([sys.executable, "-m", "ckptdoctor", "convert", str(src), str(final),
                        "--to", "safetensors"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "absent" in outcomes  # at least the early kills interrupted it
