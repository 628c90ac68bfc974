"""`ckptdoctor diff` on real pairs: a checkpoint and itself, a checkpoint and its converted
form (resume-equivalent), two successive checkpoints of a real HF Trainer run (which tensors
moved), a PEFT LoRA adapter saved untrained vs trained (lora_B all zeros), a DataParallel
prefix rename, DCP vs its torch conversion. Expectations come from independent reads
(torch.load(weights_only=True), safetensors, json) compared with torch.equal, never from the
diff's own comparison."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.codes import Code
from ckptdoctor.convert import convert
from ckptdoctor.diff import Section, detect_renames, diff
from ckptdoctor.loaders import safe_load

try:
    from tests.fixtures import factory as F
except ImportError:
    from fixtures import factory as F

warnings.filterwarnings("ignore")
runner = CliRunner()


def _codes(report) -> list[str]:
    return [f.code for f in report.findings]


@pytest.fixture(scope="module")
def run_bin(tmp_path_factory) -> Path:
    """A real Trainer run saving pytorch_model.bin (checkpoint-2, checkpoint-4)."""
    return F.make_hf_trainer_run(tmp_path_factory.mktemp("run") / "out", steps=4, save_steps=2,
                                 save_safetensors=False)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    if (ckpt / "model.safetensors").is_file():
        return load_file(ckpt / "model.safetensors")
    return torch.load(ckpt / "pytorch_model.bin", weights_only=True, map_location="cpu")


# --- a checkpoint and itself ----------------------------------------------------------------
def test_checkpoint_and_itself_is_equal_and_resume_equivalent(run_bin):
    ck = run_bin / "checkpoint-2"
    rep = diff(ck, ck, resume_equivalent=True)
    assert rep.equal and rep.resume_equivalent
    sd = _weights(ck)
    assert sorted(rep.unchanged(Section.WEIGHTS)) == sorted(sd)  # every weight compared
    osd = torch.load(ck / "optimizer.pt", weights_only=True)
    n_moments = sum(isinstance(v, torch.Tensor) for s in osd["state"].values() for v in s.values())
    assert len(rep.unchanged(Section.OPTIMIZER)) == n_moments
    assert rep.state_a.step == json.loads((ck / "trainer_state.json").read_text())["global_step"]
    res = runner.invoke(app, ["diff", str(ck), str(ck), "--resume-equivalent"])
    assert res.exit_code == 0, res.output
    assert "resume-equivalent: yes" in res.output


# --- a checkpoint and its converted form ----------------------------------------------------
@pytest.fixture(scope="module")
def converted(run_bin, tmp_path_factory) -> tuple[Path, Path]:
    """checkpoint-2 and a copy whose pytorch_model.bin became model.safetensors through
    `ckptdoctor convert` (torch -> safetensors)."""
    src = run_bin / "checkpoint-2"
    dst = tmp_path_factory.mktemp("conv") / "checkpoint-2"
    shutil.copytree(src, dst)
    (dst / "pytorch_model.bin").unlink()
    res = runner.invoke(app, ["convert", str(src / "pytorch_model.bin"),
                              str(dst / "model.safetensors"), "--to", "safetensors"])
    assert res.exit_code == 0, res.output
    return src, dst


def test_converted_checkpoint_is_resume_equivalent(converted):
    a, b = converted
    wa, wb = _weights(a), load_file(b / "model.safetensors")
    assert (a / "pytorch_model.bin").is_file() and not (b / "pytorch_model.bin").exists()
    rep = diff(a, b, resume_equivalent=True)
    assert (rep.kind_a, rep.kind_b) == ("torch", "safetensors")
    # independent: the same tensors, bit for bit (tied wte/lm_head stored once, re-tied)
    assert set(wb) <= set(wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    assert rep.resume_equivalent, [f.message for f in rep.findings]
    assert set(rep.unchanged(Section.WEIGHTS)) == set(wa)
    res = runner.invoke(app, ["diff", str(a), str(b), "--resume-equivalent", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["resume_equivalent"] is True


def test_changed_tensor_breaks_resume_equivalence(converted, tmp_path):
    a, b = converted
    c = tmp_path / "c"
    shutil.copytree(b, c)
    sd = load_file(c / "model.safetensors")
    key = sorted(sd)[3]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] += 1e-3
    with safe_open(c / "model.safetensors", "pt") as fh:
        meta = fh.metadata()  # keeps the tied-weight alias convert recorded
    save_file(sd, c / "model.safetensors", metadata=meta)
    rep = diff(a, c, resume_equivalent=True)
    assert not rep.resume_equivalent
    assert rep.moved(Section.WEIGHTS) == [key]
    nre = [f for f in rep.findings if f.code == Code.NOT_RESUME_EQUIVALENT.code]
    assert nre and key in nre[0].message
    res = runner.invoke(app, ["diff", str(a), str(c), "--resume-equivalent"])
    assert res.exit_code == 1
    # within a loose tolerance the plain diff calls them equal
    assert runner.invoke(app, ["diff", str(a), str(c), "--atol", "1e-2"]).exit_code == 0
    assert runner.invoke(app, ["diff", str(a), str(c)]).exit_code == 1


def test_missing_optimizer_is_restart_from_scratch(converted, tmp_path):
    a, b = converted
    c = tmp_path / "c"
    shutil.copytree(b, c)
    (c / "optimizer.pt").unlink()
    rep = diff(a, c, resume_equivalent=True)
    missing = [f for f in rep.findings if f.code == Code.DIFF_STATE_MISSING.code]
    assert [f.path for f in missing] == ["optimizer"]
    assert "from scratch" in missing[0].message
    assert not rep.resume_equivalent


# --- two successive checkpoints -------------------------------------------------------------
def test_successive_checkpoints_report_what_moved(run_bin):
    a, b = run_bin / "checkpoint-2", run_bin / "checkpoint-4"
    rep = diff(a, b)
    assert not rep.equal
    wa, wb = _weights(a), _weights(b)
    moved = {k for k in wa if not torch.equal(wa[k], wb[k])}
    assert set(rep.moved(Section.WEIGHTS)) == moved and moved
    assert set(rep.unchanged(Section.WEIGHTS)) == set(wa) - moved
    ta = json.loads((a / "trainer_state.json").read_text())
    tb = json.loads((b / "trainer_state.json").read_text())
    assert (rep.state_a.step, rep.state_b.step) == (ta["global_step"], tb["global_step"])
    assert (rep.state_a.epoch, rep.state_b.epoch) == (ta["epoch"], tb["epoch"])
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    assert rep.state_a.lr == [g["lr"] for g in oa["param_groups"]]
    assert rep.state_b.lr == [g["lr"] for g in ob["param_groups"]]
    for pid, st in oa["state"].items():
        row = rep.moments[str(pid)]
        na = float(torch.linalg.vector_norm(st["exp_avg"].double()))
        nb = float(torch.linalg.vector_norm(ob["state"][pid]["exp_avg_sq"].double()))
        assert math.isclose(row["exp_avg"]["norm"][0], na, rel_tol=1e-9)
        assert math.isclose(row["exp_avg_sq"]["norm"][1], nb, rel_tol=1e-9)
        assert row["step"] == [float(st["step"]), float(ob["state"][pid]["step"])]
    # max abs diff of one tensor, independently
    k = sorted(moved)[0]
    t = next(x for x in rep.tensors if x.key == k)
    assert math.isclose(t.max_abs, float((wa[k].double() - wb[k].double()).abs().max()),
                        rel_tol=1e-12)
    cos = float(torch.nn.functional.cosine_similarity(wa[k].double().reshape(1, -1),
                                                      wb[k].double().reshape(1, -1)))
    assert math.isclose(t.cosine, cos, rel_tol=1e-9)
    # the torch CPU RNG moved, python's did not (nothing in the run draws from it)
    ra, rb = safe_load(a / "rng_state.pth"), safe_load(b / "rng_state.pth")
    assert rep.rng["rng_state.cpu"] is torch.equal(ra["cpu"], rb["cpu"])
    assert rep.rng["rng_state.python"] is (ra["python"] == rb["python"])
    res = runner.invoke(app, ["diff", str(a), str(b)])
    assert res.exit_code == 1
    assert "step 2 -> 4" in res.output


def test_jobs_give_the_same_answer(run_bin):
    a, b = run_bin / "checkpoint-2", run_bin / "checkpoint-4"
    one, two = diff(a, b, jobs=1), diff(a, b, jobs=2)
    assert [t.to_json() for t in one.tensors] == [t.to_json() for t in two.tensors]


# --- LoRA adapter untrained vs trained ------------------------------------------------------
def test_lora_untrained_vs_trained(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(F.tiny_llama(0), LoraConfig(r=4, lora_alpha=8,
                                                    target_modules=["q_proj", "v_proj"]))
    pm.save_pretrained(tmp_path / "empty")
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, pm.config.vocab_size, (2, 8))
    for _ in range(3):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(tmp_path / "trained")
    a, b = tmp_path / "empty", tmp_path / "trained"
    sa = load_file(a / "adapter_model.safetensors")
    sb = load_file(b / "adapter_model.safetensors")
    zero_in_a = {k for k, v in sa.items() if not v.any()}
    assert zero_in_a and all("lora_B" in k for k in zero_in_a)
    rep = diff(a, b)
    zeros = {f.path.partition(":")[2] for f in rep.findings if f.code == Code.DIFF_ZERO.code}
    assert zeros == zero_in_a
    assert set(rep.moved()) == {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert all(next(t for t in rep.tensors if t.key == k).zero_a for k in zero_in_a)
    assert runner.invoke(app, ["diff", str(a), str(b)]).exit_code == 1


# --- renames ---------------------------------------------------------------------------------
def test_dataparallel_prefix_is_one_rename_line(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")  # "module." keys
    save_file(model.state_dict(), tmp_path / "plain.safetensors")
    rep = diff(tmp_path / "dp.pt", tmp_path / "plain.safetensors")
    renames = [f for f in rep.findings if f.code == Code.DIFF_RENAMED.code]
    assert len(renames) == 1 and "'module.'" in renames[0].message
    assert renames[0].detail["count"] == 4
    assert not any(rep.only_a.values()) and not any(rep.only_b.values())
    assert all(t.equal for t in rep.tensors) and len(rep.tensors) == 4
    assert not rep.equal  # a rename is a difference
    res = runner.invoke(app, ["diff", str(tmp_path / "dp.pt"), str(tmp_path / "plain.safetensors")])
    assert res.exit_code == 1
    assert sum("CK903" in line for line in res.output.splitlines()) == 1


def test_detect_renames_prefix_swap():
    a = {f"module.layers.{i}.w" for i in range(5)} | {"module.head"}
    b = {f"model.layers.{i}.w" for i in range(5)} | {"model.head"}
    (old, new, pairs), = detect_renames(a, b)
    assert (old, new, len(pairs)) == ("module.", "model.", 6)
    assert detect_renames({"x.a", "y.b"}, {"z.c"}) == []


# --- DCP vs torch -----------------------------------------------------------------------------
def test_dcp_and_its_torch_conversion(tmp_path):
    src = F.make_dcp(tmp_path / "dcp")
    convert(src, tmp_path / "model.pt", "torch")
    rep = diff(src, tmp_path / "model.pt", resume_equivalent=True)
    assert rep.resume_equivalent, [f.message for f in rep.findings]
    obj = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(rep.unchanged(Section.WEIGHTS)) == set(obj["model"])
    assert rep.state_a.step == rep.state_b.step == obj["train_state"]["step"]
    n_moments = sum(isinstance(v, torch.Tensor) for s in obj["optim"]["state"].values()
                    for v in s.values())
    assert len(rep.unchanged(Section.OPTIMIZER)) == n_moments


# --- errors ------------------------------------------------------------------------------------
def test_unreadable_side_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"not a checkpoint at all")
    save_file({"w": torch.zeros(2)}, tmp_path / "ok.safetensors")
    res = runner.invoke(app, ["diff", str(tmp_path / "ok.safetensors"), str(bad)])
    assert res.exit_code == 2
    assert "CK901" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["diff", str(tmp_path / "ok.safetensors"), str(tmp_path / "nope")])
    assert res.exit_code == 2 and "CK001" in res.output


def test_nan_and_shape_findings(tmp_path):
    save_file({"w": torch.ones(3), "v": torch.zeros(2, 2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.tensor([1.0, float("nan"), float("inf")]), "v": torch.zeros(4)},
              tmp_path / "b.safetensors")
    rep = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    w = next(t for t in rep.tensors if t.key == "w")
    assert (w.nan_a, w.inf_a, w.nan_b, w.inf_b) == (0, 0, 1, 1) and not w.close
    assert Code.DIFF_SHAPE.code in _codes(rep) and Code.DIFF_NONFINITE.code in _codes(rep)


# --- DeepSpeed ZeRO and Lightning --------------------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_checkpoint_vs_its_fp32_consolidation(tmp_path, stage):
    src = F.make_deepspeed(tmp_path / "ds", stage=stage, world_size=2)
    expected = F.deepspeed_expected_state_dict(src, stage=stage, world_size=2)
    torch.save(expected, tmp_path / "fp32.pt")
    rep = diff(src, tmp_path / "fp32.pt")
    assert rep.kind_a == "deepspeed"
    assert set(rep.unchanged(Section.WEIGHTS)) == set(expected)  # bit-identical fp32 masters
    assert rep.state_a.step == int((src / "latest").read_text().strip().removeprefix("global_step"))
    # the consolidated file has no optimizer: resuming from it restarts Adam
    assert [f.path for f in rep.findings if f.code == Code.DIFF_STATE_MISSING.code] == ["optimizer"]
    # ZeRO-1/2/3: unsharded, per parameter, whatever the world size
    params = [k for k in expected if f"state.{k}.exp_avg" in rep.only_a[Section.OPTIMIZER]]
    assert params and not any(k.startswith("rank") for k in rep.only_a[Section.OPTIMIZER])


def test_lightning_ckpt_vs_converted_weights(tmp_path):
    ckpt = F.make_lightning_ckpt(tmp_path / "lit", hparams_namespace=False)
    convert(ckpt, tmp_path / "st", "safetensors")
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    rep = diff(ckpt, tmp_path / "st", resume_equivalent=True)
    assert rep.kind_a == "lightning"
    assert set(rep.unchanged(Section.WEIGHTS)) == set(sd)
    assert rep.state_a.step == torch.load(ckpt, weights_only=True)["global_step"]
    # callbacks hold a tensor (best_model_score): convert leaves them out (CK709), so B would
    # not resume as A. SGD without momentum has no tensor state: its param groups travel in
    # model.extra.json, and the diff files them under optimizer as it does for the .ckpt.
    assert not rep.resume_equivalent
    assert torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"] == {}
    assert rep.only_a.get(Section.OPTIMIZER, []) == []
    assert rep.only_b.get(Section.OPTIMIZER, []) == []
    assert rep.only_a[Section.OTHER]
    assert all(k.startswith("callbacks.") for k in rep.only_a[Section.OTHER])
    assert Code.DIFF_KEYS.code in _codes(rep) and Code.NOT_RESUME_EQUIVALENT.code in _codes(rep)
    # the two files ModelCheckpoint wrote after the same step: the same weights
    other = next(p for p in ckpt.parent.glob("epoch=*.ckpt"))
    rep2 = diff(other, ckpt)
    assert rep2.moved(Section.WEIGHTS) == [] and rep2.moved(Section.OPTIMIZER) == []


# --- bounded memory ---------------------------------------------------------------------------
def test_diff_memory_is_bounded_by_the_largest_pair(tmp_path):
    """Peak RSS of a diff of two ~170 MB files stays near one tensor pair, far below the
    files' total (child process; VmHWM reset with clear_refs, see test_estimate.py)."""
    import os
    import subprocess
    import sys

    sizes = [12_500_000, 10_000_000, 7_500_000, 12_500_000]  # fp32: 170 MB per file
    g = torch.Generator().manual_seed(0)
    a = {f"w{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    save_file(a, tmp_path / "a.safetensors")
    b = {k: v + 1e-3 for k, v in a.items()}
    save_file(b, tmp_path / "b.safetensors")
    del a, b
    code = (
        "import sys\n"
        "from ckptdoctor.diff import diff\n"
        "import torch; torch.zeros(1)\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
        "if l.startswith('VmHWM:'))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = hwm()\n"
        "rep = diff(sys.argv[1], sys.argv[2])\n"
        "assert len(rep.moved()) == 4\n"
        "print(hwm() - base)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.safetensors")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(root)), check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    largest_pair = 2 * 4 * max(sizes)
    total = 2 * 4 * sum(sizes)
    assert peak < largest_pair + 96 * 2**20, (peak, largest_pair, total)
    assert peak < 0.75 * total  # and far from loading both sides (the first bound is the tight one)


def test_rich_table_on_a_terminal_and_jobs_option(run_bin):
    from ckptdoctor.diff import render_text

    a, b = run_bin / "checkpoint-2", run_bin / "checkpoint-4"
    rep = diff(a, b)
    plain, rich = render_text(rep, color=False), render_text(rep, color=True)
    assert "changed tensors" in rich and "\x1b[" in rich and "\x1b[" not in plain
    res = runner.invoke(app, ["diff", str(a), str(b), "--jobs", "2", "--format", "json"])
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["command"] == "diff" and doc["equal"] is False
    assert {t["key"] for t in doc["tensors"] if t["section"] == "weights" and not t["equal"]} \
        == set(rep.moved())


def test_repaired_checkpoint_is_resume_equivalent(run_bin, tmp_path):
    """repair --consumer torch rewrites rng_state.pth (numpy arrays become lists so plain
    weights_only loads it): a different file that restores the same RNG streams."""
    import numpy as np

    src = run_bin / "checkpoint-2"
    dst = tmp_path / "checkpoint-2"
    shutil.copytree(src, dst)
    res = runner.invoke(app, ["repair", str(dst), "--yes", "--consumer", "torch", "--no-backup"])
    assert res.exit_code == 0, res.output
    assert (dst / "rng_state.pth").read_bytes() != (src / "rng_state.pth").read_bytes()
    torch.load(dst / "rng_state.pth", weights_only=True)  # the point of the repair
    # independent: both numpy states give the same draws
    draws = []
    for p in (src, dst):
        np.random.set_state(tuple(safe_load(p / "rng_state.pth")["numpy"]))
        draws.append(np.random.rand(4))
    assert np.array_equal(*draws)
    rep = diff(src, dst, resume_equivalent=True)
    assert rep.resume_equivalent, [f.message for f in rep.findings]
    # a numpy state that really differs is still a difference
    state = safe_load(dst / "rng_state.pth", mmap=False)  # overwritten below: no mapping
    state["numpy"] = list(state["numpy"])
    state["numpy"][2] = (state["numpy"][2] + 1) % 624
    torch.save(state, dst / "rng_state.pth")
    rep = diff(src, dst, resume_equivalent=True)
    assert not rep.resume_equivalent and rep.rng["rng_state.numpy"] is False
