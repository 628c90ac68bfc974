"""Repair backs up originals by hard-linking them when the backup is on the same filesystem
(issue 14, gap 5: nothing is copied twice, and the originals are still kept until verified),
and by copying otherwise. The files are the numpy-1 fixtures (written by real torch / numpy /
transformers, see tests/fixtures), repaired for plain torch.load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from ckptdoctor.repair import render_result, repair, undo

NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"
NAMES = ("rng_state.pth", "random_states_0.pkl", "numpy_scalars.pt", "training_args.bin")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _ckpt(root: Path) -> Path:
    d = root / "np1"
    d.mkdir(parents=True)
    for name in NAMES:
        shutil.copy2(NUMPY1 / name, d / name)
    return d


def test_backup_is_a_hard_link_to_the_original_inode(tmp_path):
    d = _ckpt(tmp_path)
    before = {n: (os.stat(d / n).st_ino, _sha(d / n)) for n in NAMES}
    result = repair(d, consumer="torch")
    assert result.exit_code == 0, render_result(result)
    session = Path(result.backup_dir)
    manifest = json.loads((session / "manifest.json").read_text())
    replaced = {e["rel"] for e in manifest["files"]}
    assert replaced == set(NAMES)
    for e in manifest["files"]:
        ino, digest = before[e["rel"]]
        backup = session / e["rel"]
        assert e["how"] == "hardlink"
        assert os.stat(backup).st_ino == ino  # the original's own inode: nothing was copied
        assert _sha(backup) == digest == e["sha256"]  # and it still holds the original bytes
        assert os.stat(d / e["rel"]).st_ino != ino  # the repaired file is a new inode
        assert os.stat(backup).st_nlink == 1  # the checkpoint no longer points at it
    assert undo(d)
    assert {n: _sha(d / n) for n in NAMES} == {n: digest for n, (_, digest) in before.items()}


def test_backup_on_another_filesystem_is_a_verified_copy(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to back up to")
    d = _ckpt(tmp_path)
    before = {n: (os.stat(d / n).st_ino, _sha(d / n)) for n in NAMES}
    elsewhere = Path(shm) / f"ckptdoctor-test-{os.getpid()}-{tmp_path.name}"
    try:
        result = repair(d, consumer="torch", backup_dir=elsewhere)
        assert result.exit_code == 0, render_result(result)
        session = Path(result.backup_dir)
        manifest = json.loads((session / "manifest.json").read_text())
        for e in manifest["files"]:
            ino, digest = before[e["rel"]]
            assert e["how"] == "copy" and os.stat(session / e["rel"]).st_ino != ino
            assert _sha(session / e["rel"]) == digest
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
