"""`diff --resume-equivalent` on a real resharded pair: a DeepSpeed ZeRO-2 checkpoint saved by
DeepSpeed itself on 2 CPU ranks (tests/realds/reshard_job.py, as tests/test_reshard_real.py
runs it), resharded to 1 rank by `ckptdoctor reshard`, is resume-equivalent to it (the
optimizer state is compared unsharded, per parameter); a copy with one flipped byte in a rank's
optimizer file (bit rot: torch never checks the zip CRCs) is not. test_reshard_real.py proves
independently, by resuming both in DeepSpeed, that the resharded checkpoint resumes with the
same state. Skipped where deepspeed does not import."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.diff import Section, diff

pytest.importorskip("deepspeed", reason="deepspeed is not installed")
try:
    from tests.test_reshard_real import _launch
except ImportError:
    from test_reshard_real import _launch

runner = CliRunner()
# the model of reshard_job.py: Sequential(Linear(5, 7), Tanh(), Linear(7, 3))
PARAMS = ("0.weight", "0.bias", "2.weight", "2.bias")


@pytest.fixture(scope="module")
def zero2_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zero2")
    src = root / "z2_dp2"
    _launch(2, "save", src, 2)
    dst = root / "z2_dp1"
    res = runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", "1"])
    assert res.exit_code == 0, res.output
    return src, dst


def _flip_byte_in_largest_record(f: Path) -> None:
    """Bit rot in a torch zip: one byte in the middle of the largest tensor record."""
    with zipfile.ZipFile(f) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(f, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len = int.from_bytes(fh.read(2), "little")
        extra_len = int.from_bytes(fh.read(2), "little")
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0x40]))


def test_zero2_and_its_reshard_are_resume_equivalent(zero2_pair):
    src, dst = zero2_pair
    tag = (src / "latest").read_text().strip()
    assert len(list((src / tag).glob("*optim_states.pt"))) == 2
    assert len(list((dst / tag).glob("*optim_states.pt"))) == 1
    rep = diff(src, dst, resume_equivalent=True)
    assert rep.resume_equivalent, [f.message for f in rep.findings]
    # every parameter's Adam moments were compared (unsharded), and the fp32 weights
    compared = set(rep.unchanged(Section.OPTIMIZER))
    for p in PARAMS:
        assert {f"state.{p}.exp_avg", f"state.{p}.exp_avg_sq"} <= compared
    assert set(PARAMS) <= set(rep.unchanged(Section.WEIGHTS))
    res = runner.invoke(app, ["diff", str(src), str(dst), "--resume-equivalent"])
    assert res.exit_code == 0, res.output


def test_a_damaged_copy_is_not_resume_equivalent(zero2_pair, tmp_path):
    src, dst = zero2_pair
    bad = tmp_path / "damaged"
    shutil.copytree(dst, bad)
    tag = (src / "latest").read_text().strip()
    (optim,) = (bad / tag).glob("*optim_states.pt")
    _flip_byte_in_largest_record(optim)
    rep = diff(src, bad, resume_equivalent=True)
    assert not rep.resume_equivalent
    moved = rep.moved(Section.WEIGHTS) + rep.moved(Section.OPTIMIZER)
    assert len(moved) == 1, moved  # one byte: one parameter's weight or moment
    res = runner.invoke(app, ["diff", str(src), str(bad), "--resume-equivalent"])
    assert res.exit_code == 1, res.output
