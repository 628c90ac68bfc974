"""Disk full and read-only directories while repair / convert write: the original is left
untouched, nothing half-written is left behind, and the user gets one line with CK710.

Disk full is a real tiny tmpfs (needs root to mount; skipped otherwise). A read-only
directory is real too: the CLI runs with CAP_DAC_OVERRIDE dropped (util-linux setpriv), so
root gets the EACCES an ordinary user would."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cli(*args: str, drop_caps: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ckptdoctor", *map(str, args)]
    if drop_caps:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture()
def tiny_fs(tmp_path):
    """A 160 KiB tmpfs, most of it taken by a filler file."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def rng_file(dirpath: Path) -> Path:
    p = dirpath / "rng_state.pth"
    torch.save({"numpy": np.random.get_state(), "w": torch.zeros(1000)}, p)
    return p


def fill(mnt: Path, leave: int) -> None:
    free = shutil.disk_usage(mnt).free
    (mnt / "filler").write_bytes(b"x" * max(0, free - leave))


def assert_one_line_ck710(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CK710" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".ckptdoctor-tmp-")]


def test_repair_on_a_full_disk_keeps_the_original(tiny_fs):
    p = rng_file(tiny_fs)
    before = digest(p)
    fill(tiny_fs, leave=12 * 1024)  # room for neither backup and rewrite
    proc = cli("repair", "--yes", "--consumer", "torch", p)
    assert_one_line_ck710(proc)
    assert "No space left" in proc.stderr
    assert digest(p) == before and no_temp_files(tiny_fs)


def test_convert_to_a_full_disk_leaves_no_output(tiny_fs, tmp_path):
    src = tmp_path / "src.pt"
    torch.save({"a": torch.zeros(60_000)}, src)  # 240 KB: more than the tmpfs holds
    proc = cli("convert", src, tiny_fs / "out.safetensors", "--to", "safetensors")
    assert_one_line_ck710(proc)
    assert not (tiny_fs / "out.safetensors").exists() and no_temp_files(tiny_fs)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop the read override")
def test_repair_in_a_read_only_directory_keeps_the_original(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    p = rng_file(d)
    before = digest(p)
    d.chmod(0o555)
    try:
        proc = cli("repair", "--yes", "--consumer", "torch", d, drop_caps=True)
        # repair reports per file (others may succeed): this one failed, original kept
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "Permission denied" in proc.stdout and "original kept" in proc.stdout
    finally:
        d.chmod(0o755)
    assert digest(p) == before and no_temp_files(d)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop the read override")
def test_convert_into_a_read_only_directory(tmp_path):
    src = tmp_path / "src.pt"
    torch.save({"a": torch.ones(10)}, src)
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        proc = cli("convert", src, d / "out.safetensors", "--to", "safetensors", drop_caps=True)
        assert_one_line_ck710(proc)
    finally:
        d.chmod(0o755)
    assert list(d.iterdir()) == []
