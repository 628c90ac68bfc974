"""`diff --resume-equivalent` on real resharded pairs: a DeepSpeed ZeRO-2 checkpoint saved by
DeepSpeed itself on 2 CPU ranks (tests/realds/reshard_job.py, as tests/test_reshard_real.py
runs it), resharded to 1 rank by `ckptdoctor reshard`, is resume-equivalent to it (the
optimizer state is compared unsharded, per parameter); a copy with one flipped byte in a rank's
optimizer file (bit rot: torch never checks the zip CRCs) is not. The same for ZeRO-3 (each
parameter partitioned on its own; resharded 2 -> 3, and 2 -> 1 with sub-groups that change
with the world size): equivalent, and a copy with one Adam moment value changed is not.
`reshard` runs this check on its staged output: a deliberately broken re-split is refused
(CK706) and DST does not appear. test_reshard_real.py proves independently, by resuming both
in DeepSpeed, that the resharded checkpoint resumes with the same state. Skipped where
deepspeed does not import."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


# --- ZeRO-3 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zero3_saves(tmp_path_factory):
    """sub_group_size -> a ZeRO-3 checkpoint saved by DeepSpeed on 2 ranks."""
    root = tmp_path_factory.mktemp("zero3")
    saved: dict = {}

    def get(sub_group: int | None) -> Path:
        if sub_group not in saved:
            saved[sub_group] = root / f"z3_dp2_sg{sub_group}"
            _launch(2, "save", saved[sub_group], 3, sub_group=sub_group)
        return saved[sub_group]
    return get


# edits a rank's optimizer file with torch itself (weights_only=True, DeepSpeed's globals
# allowed), in a child process: one value of one Adam moment
_EDIT_MOMENT = (
    "import torch, sys\n"
    "from deepspeed.runtime.fp16.loss_scaler import LossScaler\n"
    "from deepspeed.runtime.zero.config import ZeroStageEnum\n"
    "from deepspeed.utils.tensor_fragment import fragment_address\n"
    "p = sys.argv[1]\n"
    "with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):\n"
    "    sd = torch.load(p, weights_only=True)\n"
    "sd['optimizer_state_dict']['optimizer_state_dict']['state'][0]['exp_avg'][0] += 1.0\n"
    "torch.save(sd, p)\n")


@pytest.mark.parametrize("sub_group,m", [(None, 3), pytest.param(20, 1, marks=pytest.mark.oracle)])
def test_zero3_and_its_reshard_are_resume_equivalent(zero3_saves, tmp_path, sub_group, m):
    """With sub_group_size 20 the sub-groups change with the world size (2 ranks: [w0, b0],
    [w2, b2]; 1 rank: [w0], [b0, w2], [b2]): per parameter, nothing of that shows."""
    src = zero3_saves(sub_group)
    dst = tmp_path / f"z3_to{m}"
    res = runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", str(m), "--json"])
    assert res.exit_code == 0, res.output
    assert '"resume_equivalent": true' in res.output  # reshard ran the check itself
    tag = (src / "latest").read_text().strip()
    assert len(list((dst / tag).glob("*optim_states.pt"))) == m
    rep = diff(src, dst, resume_equivalent=True)
    assert rep.resume_equivalent, [f.message for f in rep.findings]
    compared = set(rep.unchanged(Section.OPTIMIZER))
    for p in PARAMS:
        assert {f"state.{p}.exp_avg", f"state.{p}.exp_avg_sq"} <= compared
    assert "group_state.0.step" in compared  # one counter for the param group, not per rank
    assert not any(k.startswith("rank") for k in rep.only_a.get(Section.OPTIMIZER, []))
    assert set(PARAMS) <= set(rep.unchanged(Section.WEIGHTS))
    res = runner.invoke(app, ["diff", str(src), str(dst), "--resume-equivalent"])
    assert res.exit_code == 0, res.output
    # SRC given as the tag directory: checked the same way (tag directory against tag directory)
    res = runner.invoke(app, ["reshard", str(src / tag), str(tmp_path / "from_tag"),
                              "--world-size", str(m), "--json"])
    assert res.exit_code == 0 and '"resume_equivalent": true' in res.output, res.output


def test_a_zero3_copy_with_one_moment_changed_is_not_resume_equivalent(zero3_saves, tmp_path):
    src = zero3_saves(None)
    dst = tmp_path / "z3_to3"
    assert runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", "3"]).exit_code == 0
    bad = tmp_path / "damaged"
    shutil.copytree(dst, bad)
    tag = (src / "latest").read_text().strip()
    rank1 = next((bad / tag).glob("*zero_pp_rank_1_*optim_states.pt"))
    proc = subprocess.run([sys.executable, "-c", _EDIT_MOMENT, str(rank1)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = diff(src, bad, resume_equivalent=True)
    assert not rep.resume_equivalent
    # rank 1 of 3 holds elements 12..23 of 0.weight (35 elements): its first is changed
    assert rep.moved(Section.OPTIMIZER) == ["state.0.weight.exp_avg"]
    assert not rep.moved(Section.WEIGHTS)
    res = runner.invoke(app, ["diff", str(src), str(bad), "--resume-equivalent"])
    assert res.exit_code == 1 and "state.0.weight.exp_avg" in res.output, res.output


def test_reshard_refuses_a_broken_resplit_its_own_check_misses(zero3_saves, tmp_path,
                                                                monkeypatch):
    """The re-split broken on purpose (rank 0's first exp_avg value of 0.weight changed as it
    is written) with reshard's own split check switched off: the resume-equivalence diff
    still refuses the output (CK706, naming the moment) and DST does not appear."""
    import ckptdoctor.reshard_zero3 as z3

    src = zero3_saves(None)
    real_read_state, real_read_partition = z3.read_state, z3._read_partition
    target: list = []

    def read_state(*a, **k):
        state = real_read_state(*a, **k)
        target.append(state.sources["exp_avg"]["0.weight"])
        return state

    def read_partition(params, rank, world, out):
        got = real_read_partition(params, rank, world, out)
        if rank == 0 and params[0] is target[-1]:
            got[0] += 1.0
        return got

    monkeypatch.setattr(z3, "read_state", read_state)
    monkeypatch.setattr(z3, "_read_partition", read_partition)
    monkeypatch.setattr(z3, "_verify3", lambda *a, **k: None)
    dst = tmp_path / "broken"
    res = runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", "3"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "CK706" in text, res.output
    assert "not resume-equivalent" in text and "state.0.weight.exp_avg" in text
    assert not dst.exists() and not list(tmp_path.iterdir())  # nothing staged left either
    # --no-verify skips the checks: the broken output is written (what the check prevents)
    res = runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", "3", "--no-verify"])
    assert res.exit_code == 0 and "NOT verified" in res.output
    assert not diff(src, dst, resume_equivalent=True).resume_equivalent


def test_reshard_refuses_a_changed_step_counter(zero2_pair, tmp_path, monkeypatch):
    """ZeRO-2: the per-group step counter (not part of the split, so reshard's own split
    check does not look at it) changed as the plan copies it: refused by the diff (CK706)."""
    import ckptdoctor.reshard as rs

    src, _ = zero2_pair
    real_plan = rs._plan

    def plan(*a, **k):
        out = real_plan(*a, **k)
        out[0]["scalars"]["step"] = out[0]["scalars"]["step"] + 1
        return out

    monkeypatch.setattr(rs, "_plan", plan)
    dst = tmp_path / "broken"
    res = runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "CK706" in text and "group_state.0.step" in text, res.output
    assert not dst.exists()
