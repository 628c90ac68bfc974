"""Layouts on real checkpoints: each is recognised with its name and step, each completeness
check fires on a damaged copy and stays silent on the clean one.

The checkpoints come from tests/fixtures/factory.py: written by the real library where it is
installed (transformers Trainer / save_pretrained, peft, accelerate, Lightning, DCP), hand-built
with torch.save / DCP for DeepSpeed, Megatron-LM, torchtitan, Lingua and llama-recipes, which are
not installed. The Lightning DeepSpeed / FSDP `.ckpt` directories are hand-built here (below)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptdoctor.formats import detect_file
from ckptdoctor.layouts import (
    LAYOUT_NAMES,
    LAYOUTS,
    DirView,
    describe_file,
    detect_layout,
    find_checkpoints,
)

try:
    from tests.fixtures import factory as f
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fixtures import factory as f

pytestmark = pytest.mark.filterwarnings("ignore")


# --- hand-built: Lightning's strategy-specific `.ckpt` directories ----------------------------
def make_lightning_fsdp(dest: Path) -> Path:
    """FSDP sharded `.ckpt` directory (Lightning FSDPStrategy.save_checkpoint): DCP keys
    `model` and `optimizer_<i>`, then rank 0 torch.saves the rest as meta.pt."""
    lin = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    f._dcp_save({"model": lin.state_dict(), "optimizer_0": opt.state_dict()}, dest)
    torch.save({"epoch": 1, "global_step": 8, "pytorch-lightning_version": "2.6.6",
                "loops": {}, "callbacks": {}}, dest / "meta.pt")
    return dest


def make_lightning_deepspeed(dest: Path) -> Path:
    """DeepSpeed strategy `.ckpt` directory: engine.save_checkpoint(path, tag="checkpoint",
    client_state=<Lightning's dict without state_dict/optimizer_states>)."""
    f.make_deepspeed(dest, stage=2, world_size=1, steps=6)
    (dest / "global_step6").rename(dest / "checkpoint")
    (dest / "latest").write_text("checkpoint")
    states = dest / "checkpoint" / "mp_rank_00_model_states.pt"
    with f.deepspeed_stub_modules():
        sd = torch.load(states, weights_only=False)
        sd.update({"epoch": 0, "global_step": 6, "pytorch-lightning_version": "2.6.6",
                   "loops": {}})
        torch.save(sd, states)
    return dest


# --- fixtures (module scope: each checkpoint is written once) ---------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Every clean checkpoint, under one tree (find_checkpoints walks it too)."""
    r = tmp_path_factory.mktemp("ckpts")
    f.make_hf_trainer_run(r / "hf_run")  # checkpoint-2, checkpoint-4
    f.make_hf_model(r / "hf_model", sharded=True)  # 6 safetensors shards + index
    f.make_hf_model(r / "hf_model_bin", sharded=True, safe=False)  # .bin shards, tied weights
    f.make_peft_adapter(r / "peft")
    f.make_accelerate_state(r / "accelerate")
    f.make_dcp(r / "dcp")
    f.make_deepspeed(r / "deepspeed")  # ZeRO-2, 2 ranks, global_step5
    f.make_deepspeed(r / "deepspeed_z3", stage=3)
    f.make_megatron(r / "megatron")  # iter_0000100
    f.make_megatron(r / "megatron_dist", fmt="torch_dist")
    f.make_lingua(r / "lingua")  # lingua/checkpoints/0000000010
    f.make_torchtitan(r / "titan")  # titan/checkpoint/step-10
    f.make_llama_recipes_fsdp(r / "llama_recipes")  # llama_recipes/fine-tuned-tiny-llama
    f.make_lightning_ckpt(r / "lightning", hparams_namespace=False)  # lightning/checkpoints/
    make_lightning_fsdp(r / "lightning_fsdp" / "epoch=1-step=8.ckpt")
    make_lightning_deepspeed(r / "lightning_ds" / "epoch=0-step=6.ckpt")
    return r


@pytest.fixture
def damaged(root, tmp_path):
    """copy(rel) -> a private copy of root/rel to break."""
    def copy(rel: str) -> Path:
        dst = tmp_path / Path(rel).name
        shutil.copytree(root / rel, dst, symlinks=True)
        return dst
    return copy


def run(path: Path):
    d = DirView(path)
    layout = detect_layout(d)
    assert layout is not None, path
    return layout, layout.describe(d), layout.check(d)


def codes(findings) -> set[str]:
    return {f.code for f in findings}


def layout_codes(findings) -> set[str]:
    """Only this layer's findings (CK4xx): format findings come from detect_file."""
    return {c for c in codes(findings) if c.startswith("CK4")}


# --- recognition + clean checkpoints ----------------------------------------------------------
CLEAN = [
    ("hf_run", "hf-run", 4),
    ("hf_run/checkpoint-2", "hf-trainer", 2),
    ("hf_run/checkpoint-4", "hf-trainer", 4),
    ("hf_model", "hf-model", None),
    ("hf_model_bin", "hf-model", None),
    ("peft", "peft", None),
    ("accelerate", "accelerate", 0),
    ("dcp", "dcp", None),
    ("deepspeed", "deepspeed", 5),
    ("deepspeed_z3", "deepspeed", 5),
    ("deepspeed/global_step5", "deepspeed", 5),  # a tag dir on its own
    ("megatron", "megatron", 100),
    ("megatron/iter_0000100", "megatron", 100),
    ("megatron_dist", "megatron", 100),
    ("lingua/checkpoints/0000000010", "lingua", 10),
    ("titan/checkpoint", "torchtitan", 10),
    ("titan/checkpoint/step-10", "torchtitan", 10),
    ("llama_recipes/fine-tuned-tiny-llama", "llama-recipes-fsdp", None),
    ("lightning/checkpoints", "lightning", 4),
    ("lightning/checkpoints/last.ckpt", "lightning", 4),
    ("lightning_fsdp/epoch=1-step=8.ckpt", "lightning", 8),
    ("lightning_ds/epoch=0-step=6.ckpt", "lightning", 6),
    ("lightning_ds", "lightning", 6),
]


@pytest.mark.parametrize("rel,name,step", CLEAN, ids=[c[0] for c in CLEAN])
def test_clean_checkpoint_detected_and_silent(root, rel, name, step):
    layout, info, findings = run(root / rel)
    assert (layout.name, info.step) == (name, step)
    assert layout_codes(findings) == set(), [f.message for f in findings]


def test_registry_order_and_names():
    assert LAYOUT_NAMES == ("lightning", "megatron", "torchtitan", "lingua", "llama-recipes-fsdp",
                            "hf-run", "hf-trainer", "accelerate", "deepspeed", "peft", "hf-model",
                            "dcp", "file")
    assert len({type(x) for x in LAYOUTS}) == len(LAYOUTS)


def test_describe_details(root):
    _, run_info, _ = run(root / "hf_run")
    assert run_info.details["latest"] == "checkpoint-4"
    assert [c["step"] for c in run_info.details["checkpoints"]] == [2, 4]
    _, ck, _ = run(root / "hf_run/checkpoint-4")
    logs = json.loads((root / "hf_run/checkpoint-4/trainer_state.json").read_text())["log_history"]
    assert ck.details["learning_rate"] == [e for e in logs if "learning_rate" in e][-1][
        "learning_rate"]
    assert ck.details["dtype"] == "float32" and ck.details["transformers_version"]
    _, model, _ = run(root / "hf_model")
    index = json.loads((root / "hf_model/model.safetensors.index.json").read_text())
    assert model.details["num_shards"] == 6
    assert model.details["total_size"] == index["metadata"]["total_size"]
    _, ds, _ = run(root / "deepspeed")
    want = {"zero_stage": 2, "dp_world_size": 2, "ds_version": "0.16.4", "tag": "global_step5"}
    assert {k: ds.details[k] for k in want} == want
    assert run(root / "deepspeed_z3")[1].details["zero_stage"] == 3
    assert run(root / "deepspeed/global_step5")[1].details["world_size"] == 2
    _, mg, _ = run(root / "megatron")
    assert mg.details["format"] == "torch" and mg.details["tensor_parallel"] == 1
    assert mg.details["iteration"] == 100 and mg.details["checkpoint_version"] == 3.0
    assert run(root / "megatron_dist")[1].details["format"] == "torch_dist"
    _, lg, _ = run(root / "lingua/checkpoints/0000000010")
    assert lg.details["dp_world_size"] == 1 and set(lg.details["keys"]) == {"model", "optim"}
    assert lg.details["consolidated"] is True
    _, lt, _ = run(root / "lightning/checkpoints")
    assert {c["name"] for c in lt.details["checkpoints"]} == {"epoch=0-step=4.ckpt", "last.ckpt"}
    _, pf, _ = run(root / "peft")
    assert pf.details["r"] == 4 and pf.details["tensors"] == 8
    _, fs, _ = run(root / "lightning_fsdp/epoch=1-step=8.ckpt")
    assert fs.details["form"] == "fsdp" and fs.details["pytorch-lightning_version"] == "2.6.6"


def test_describe_file(root):
    ckpt = root / "lightning/checkpoints/last.ckpt"
    info = describe_file(ckpt, detect_file(ckpt, "last.ckpt"))
    assert (info.name, info.step, info.details["epoch"]) == ("lightning", 4, 0)
    assert info.details["pytorch-lightning_version"]
    st = root / "hf_model/model-00001-of-00006.safetensors"
    assert describe_file(st, detect_file(st, "m")).name == "file"
    assert run(st)[0].name == "file"


def test_find_checkpoints(root):
    found = find_checkpoints(DirView(root))
    assert found == [
        "accelerate", "dcp", "deepspeed", "deepspeed_z3", "hf_model", "hf_model_bin", "hf_run",
        "lightning/checkpoints",
        "lightning_ds", "lightning_fsdp",  # dirs holding `.ckpt` directories: Lightning runs
        "lingua/checkpoints/0000000010", "llama_recipes/fine-tuned-tiny-llama", "megatron",
        "megatron_dist", "peft", "titan/checkpoint"]


# --- each completeness check fires on a damaged copy ------------------------------------------
def finding(findings, code):
    hits = [f for f in findings if f.code == code]
    assert hits, f"{code} not in {[(f.code, f.message) for f in findings]}"
    return hits[0]


def test_hf_trainer_step_mismatch(damaged):
    ck = damaged("hf_run/checkpoint-4")
    state = json.loads((ck / "trainer_state.json").read_text())
    state["global_step"] = 3
    (ck / "trainer_state.json").write_text(json.dumps(state))
    assert finding(run(ck)[2], "CK404").detail == {"global_step": 3, "dir_step": 4}


def test_hf_trainer_missing_state_weights_and_bad_json(damaged):
    ck = damaged("hf_run/checkpoint-4")
    (ck / "trainer_state.json").unlink()
    (ck / "model.safetensors").unlink()
    layout, _, found = run(ck)
    assert layout.name == "hf-trainer"
    assert {f.path for f in found if f.code == "CK401"} == {"trainer_state.json",
                                                           "model.safetensors"}
    (ck / "trainer_state.json").write_text('{"global_step": 4,')
    assert "CK415" in codes(run(ck)[2])


def test_hf_trainer_optimizer_scheduler_and_rng(damaged):
    ck = damaged("hf_run/checkpoint-4")
    (ck / "scheduler.pt").unlink()
    (ck / "rng_state.pth").unlink()
    found = run(ck)[2]
    # measured by tests/oracle: the Trainer silently starts a fresh optimizer and scheduler,
    # and (gpt2 applies dropout) a fresh RNG: the run goes on with different losses
    missing = {f.path: f for f in found if f.code == "CK401"}
    assert set(missing) == {"scheduler.pt", "rng_state.pth"}
    assert "dropout" in missing["rng_state.pth"].message
    (ck / "optimizer.pt").unlink()
    found = run(ck)[2]
    assert "CK416" in codes(found) and "optimizer.pt" not in {f.path for f in found}


def test_hf_trainer_rng_without_dropout_is_a_warning(tmp_path):
    """No dropout in config.json: a fresh RNG does not change the losses (CK405 warning)."""
    rd = f.make_hf_trainer_run(tmp_path / "out", steps=2, save_steps=2, model="llama")
    ck = rd / "checkpoint-2"
    (ck / "rng_state.pth").unlink()
    found = run(ck)[2]
    assert finding(found, "CK405").severity.name == "WARNING"
    assert "CK401" not in codes(found)


def test_hf_trainer_rng_per_rank(damaged):
    ck = damaged("hf_run/checkpoint-4")
    for r in (0, 2):
        shutil.copy(ck / "rng_state.pth", ck / f"rng_state_{r}.pth")
    (ck / "rng_state.pth").unlink()
    assert [f.detail["rank"] for f in run(ck)[2] if f.code == "CK401"] == [1]


def test_hf_trainer_with_deepspeed_checks_both(damaged):
    ck = damaged("hf_run/checkpoint-4")
    f.make_deepspeed(ck, steps=4)  # HF + DeepSpeed: global_step4/, latest, zero_to_fp32.py
    for r in range(2):
        shutil.copy(ck / "rng_state.pth", ck / f"rng_state_{r}.pth")
    layout, info, found = run(ck)
    assert layout.name == "hf-trainer" and info.step == 4
    assert info.details["deepspeed"]["zero_stage"] == 2 and info.details["world_size"] == 2
    assert layout_codes(found) == set()
    (ck / "rng_state_1.pth").unlink()
    (ck / "latest").write_text("global_step99")
    found = run(ck)[2]
    assert finding(found, "CK408").detail["tag"] == "global_step99"
    assert finding(found, "CK401").detail["rank"] == 1


def test_hf_trainer_fsdp_sharded_form(damaged):
    """FSDP SHARDED_STATE_DICT: accelerate writes pytorch_model_fsdp_0/ and optimizer_0/ (DCP)."""
    ck = damaged("hf_run/checkpoint-4")
    (ck / "model.safetensors").unlink()
    (ck / "optimizer.pt").unlink()
    lin = torch.nn.Linear(4, 4)
    f._dcp_save({"model": lin.state_dict()}, ck / "pytorch_model_fsdp_0")
    f._dcp_save({"optimizer": torch.optim.SGD(lin.parameters()).state_dict()}, ck / "optimizer_0")
    layout, info, found = run(ck)
    assert (layout.name, info.details["weights"]) == ("hf-trainer", "fsdp")
    assert layout_codes(found) == set()
    assert layout.consumer(DirView(ck), "pytorch_model_fsdp_0/__0_0.distcp").mode == "unsafe"
    (ck / "pytorch_model_fsdp_0/.metadata").unlink()
    assert finding(run(ck)[2], "CK401").path == "pytorch_model_fsdp_0/.metadata"


def test_hf_run_leftover_tmp_and_children_left_to_their_own_check(damaged):
    rd = damaged("hf_run")
    (rd / "tmp-checkpoint-6").mkdir()
    (rd / "tmp-checkpoint-6" / "model.safetensors").write_bytes(b"x")
    (rd / "checkpoint-4" / "trainer_state.json").unlink()
    (rd / "checkpoint-4" / "optimizer.pt.tmp").write_bytes(b"x")
    layout, info, found = run(rd)
    assert [(x.code, x.path) for x in found] == [("CK406", "tmp-checkpoint-6")]
    child = next(c["path"] for c in info.details["checkpoints"] if c["step"] == 4)
    view = DirView(rd).sub(child)  # what validate does for each listed checkpoint
    found = detect_layout(view).check(view)
    assert {(x.code, x.path) for x in found} == {("CK401", "checkpoint-4/trainer_state.json"),
                                                ("CK406", "checkpoint-4/optimizer.pt.tmp")}


def test_hf_model_shard_index_checks(damaged):
    md = damaged("hf_model")
    index = json.loads((md / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra.weight"] = "model-00001-of-00006.safetensors"
    (md / "model.safetensors.index.json").write_text(json.dumps(index))
    assert finding(run(md)[2], "CK403").path == "model-00001-of-00006.safetensors"
    del index["weight_map"]["extra.weight"]
    index["metadata"]["total_size"] += 4
    (md / "model.safetensors.index.json").write_text(json.dumps(index))
    assert layout_codes(run(md)[2]) == {"CK414"}
    (md / "model-00006-of-00006.safetensors").unlink()
    assert layout_codes(run(md)[2]) == {"CK402"}


def test_peft_empty_adapter(tmp_path, damaged):
    empty = f.make_peft_adapter(tmp_path / "empty", empty=True)  # ZeRO-3 save_pretrained({})
    assert finding(run(empty)[2], "CK410").path == "adapter_model.safetensors"
    parts = f.make_peft_adapter(tmp_path / "z3", zero3_partitioned=True)  # shape (0,) tensors
    assert "8 of 8 tensors are empty" in finding(run(parts)[2], "CK410").message
    pd = damaged("peft")
    (pd / "adapter_model.safetensors").unlink()
    torch.save({}, pd / "adapter_model.bin")  # the "443-byte adapter_model.bin"
    assert finding(run(pd)[2], "CK410").path == "adapter_model.bin"


def test_peft_rank_and_target_mismatch(damaged):
    pd = damaged("peft")
    cfg = json.loads((pd / "adapter_config.json").read_text())
    cfg["r"] = 8
    (pd / "adapter_config.json").write_text(json.dumps(cfg))
    assert finding(run(pd)[2], "CK411").severity.name == "ERROR"
    cfg.update(r=4, target_modules=["q_proj", "v_proj", "k_proj"])
    (pd / "adapter_config.json").write_text(json.dumps(cfg))
    hit = finding(run(pd)[2], "CK424")  # was CK411 emitted as a warning: one code, one severity
    assert hit.severity.name == "WARNING" and hit.detail["unused"] == ["k_proj"]
    assert "CK411" not in codes(run(pd)[2])


def test_accelerate_rng_and_optimizer(damaged):
    ad = damaged("accelerate")
    (ad / "random_states_0.pkl").unlink()
    layout, _, found = run(ad)
    assert layout.name == "accelerate"
    # measured by tests/oracle: accelerate swallows the missing file, the run continues with
    # a fresh RNG and different losses -> an error, not CK405
    hit = finding(found, "CK401")
    assert (hit.path, hit.severity.name, hit.detail["rank"]) == ("random_states_0.pkl", "ERROR", 0)
    (ad / "optimizer.bin").unlink()  # scheduler.bin proves an optimizer was prepared
    found = run(ad)[2]
    assert "optimizer.bin" in {f.path for f in found if f.code == "CK401"}
    assert "CK416" not in codes(found)
    shutil.copy(ad / "scheduler.bin", ad / "scheduler_2.bin")
    assert "scheduler_1.bin" in {f.path for f in run(ad)[2] if f.code == "CK401"}


def test_accelerate_scheduler_proven_by_initial_lr(damaged):
    """torch's LRScheduler writes `initial_lr` into the optimizer's param_groups, so a missing
    scheduler.bin is visible from optimizer.bin (load_state: FileNotFoundError)."""
    ad = damaged("accelerate")
    assert "scheduler.bin" not in {f.path for f in run(ad)[2] if f.code == "CK401"}
    (ad / "scheduler.bin").unlink()
    assert "scheduler.bin" in {f.path for f in run(ad)[2] if f.code == "CK401"}


def test_accelerate_model_only_is_a_warning_but_a_killed_save_is_not(damaged):
    ad = damaged("accelerate")
    for name in ("optimizer.bin", "scheduler.bin"):
        (ad / name).unlink()
    found = run(ad)[2]  # models + RNG: a complete save of a run without an optimizer
    assert "CK416" in codes(found) and "CK401" not in codes(found)
    (ad / "random_states_0.pkl").unlink()  # only the models: save_state killed after them
    layout, _, found = run(ad)
    assert layout.name == "accelerate"
    assert "random_states_0.pkl" in {f.path for f in found if f.code == "CK401"}


def test_deepspeed_latest_and_partitions(damaged):
    ds = damaged("deepspeed")
    (ds / "latest").write_text("global_step20")
    assert finding(run(ds)[2], "CK408").detail["tag"] == "global_step20"
    (ds / "latest").unlink()
    assert finding(run(ds)[2], "CK401").path == "latest"
    (ds / "latest").write_text("global_step5")
    (ds / "global_step5/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    hit = finding(run(ds)[2], "CK409")
    assert hit.detail == {"files": 1, "partition_count": 2, "dp_world_size": 2}


def test_deepspeed_zero3_model_states(damaged):
    ds = damaged("deepspeed_z3")
    (ds / "global_step5/zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    assert finding(run(ds)[2], "CK401").path.endswith("zero_pp_rank_1_mp_rank_00_model_states.pt")


def test_dcp_truncated_and_unfinished(damaged):
    dd = damaged("dcp")
    shard = dd / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    hit = finding(run(dd)[2], "CK412")
    assert hit.path == "__0_0.distcp" and hit.detail["size"] == 1000
    (dd / ".metadata").rename(dd / ".metadata.tmp")
    found = run(dd)[2]
    assert finding(found, "CK401").path == ".metadata"
    assert finding(found, "CK406").path == ".metadata.tmp"


def test_megatron_tracker(damaged):
    mg = damaged("megatron")
    (mg / "latest_checkpointed_iteration.txt").unlink()
    layout, _, found = run(mg)
    assert layout.name == "megatron" and "CK413" in codes(found)
    (mg / "latest_checkpointed_iteration.txt").write_text("30")
    assert "iter_0000030" in finding(run(mg)[2], "CK413").message
    (mg / "latest_checkpointed_iteration.txt").write_text("100")
    shutil.copytree(mg / "iter_0000100/mp_rank_00", mg / "iter_0000100/mp_rank_02")
    assert finding(run(mg)[2], "CK401").path == "iter_0000100/mp_rank_01"


def test_megatron_dist_needs_metadata_json(damaged):
    mg = damaged("megatron_dist")
    (mg / "iter_0000100/metadata.json").unlink()
    assert finding(run(mg)[2], "CK401").path == "iter_0000100/metadata.json"


def test_lingua_train_state_per_rank_and_params(damaged):
    lg = damaged("lingua/checkpoints/0000000010")
    params = json.loads((lg / "params.json").read_text())
    params["distributed"]["dp_shard"] = 2  # two data-parallel ranks, one train_state
    (lg / "params.json").write_text(json.dumps(params))
    layout, info, found = run(lg)
    assert layout.name == "lingua"
    assert finding(found, "CK401").detail["rank"] == 1
    (lg / "params.json").unlink()  # resume does not read it: a warning, not an error
    hit = finding(run(lg)[2], "CK420")
    assert hit.path == "params.json" and hit.severity.name == "WARNING"
    assert "params.json" not in {x.path for x in run(lg)[2] if x.code == "CK401"}


def test_torchtitan_model_only_last_step(damaged):
    tt = damaged("titan/checkpoint")
    f._dcp_save({"layers.weight": torch.zeros(2)}, tt / "step-20")  # last_save_model_only
    layout, info, found = run(tt)
    assert info.step == 20 and finding(found, "CK416").path == "step-20"
    assert run(tt / "step-20")[1].details["model_only"] is True
    (tt / "step-20/.metadata").unlink()  # unfinished: resume falls back to step-10
    layout, info, found = run(tt)
    assert info.step == 10 and "CK416" not in codes(found)
    assert finding(found, "CK401").path == "step-20/.metadata"


def test_llama_recipes_truncated_shard(damaged):
    lr = damaged("llama_recipes/fine-tuned-tiny-llama")
    shard = lr / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    layout, info, found = run(lr)
    assert layout.name == "llama-recipes-fsdp" and info.details["model_name"] == "tiny-llama"
    assert "CK412" in codes(found)


def test_lightning_dangling_last_and_weights_only(damaged):
    lt = damaged("lightning/checkpoints")
    (lt / "last.ckpt").unlink()
    (lt / "last.ckpt").symlink_to("epoch=0-step=9.ckpt")  # top-k pruning deleted the target
    assert finding(run(lt)[2], "CK407").path == "last.ckpt"
    ckpt = torch.load(lt / "epoch=0-step=4.ckpt", weights_only=False)
    for key in ("optimizer_states", "lr_schedulers"):  # what save_weights_only=True leaves out
        del ckpt[key]
    torch.save(ckpt, lt / "epoch=0-step=4.ckpt")
    assert finding(run(lt)[2], "CK416").path == "epoch=0-step=4.ckpt"
    assert finding(run(lt / "epoch=0-step=4.ckpt")[2], "CK416").severity.name == "WARNING"


def test_lightning_dir_forms_checked(damaged):
    fs = damaged("lightning_fsdp/epoch=1-step=8.ckpt")
    (fs / "meta.pt").unlink()
    assert finding(run(fs)[2], "CK401").path == "meta.pt"
    ds = damaged("lightning_ds/epoch=0-step=6.ckpt")
    (ds / "latest").write_text("other")
    assert "CK408" in codes(run(ds)[2])


# --- consumers: how each framework's resume loads each file -----------------------------------
def consumer(root, rel_dir, rel):
    d = DirView(root / rel_dir)
    return detect_layout(d).consumer(d, rel)


def test_consumers(root):
    rng = consumer(root, "hf_run/checkpoint-4", "rng_state.pth")
    assert rng.mode == "weights_only" and "numpy.dtypes.UInt32DType" in rng.allow
    assert rng.fatal
    assert consumer(root, "hf_run/checkpoint-4", "training_args.bin").mode == "unused"
    assert consumer(root, "hf_run", "checkpoint-2/training_args.bin").mode == "unused"
    assert consumer(root, "hf_run/checkpoint-4", "model.safetensors").mode == "safetensors"
    assert consumer(root, "hf_run/checkpoint-4", "optimizer.pt").mode == "weights_only"
    acc = consumer(root, "accelerate", "random_states_0.pkl")
    assert (acc.mode, acc.fatal) == ("weights_only", False) and "_codecs.encode" in acc.allow
    assert consumer(root, "accelerate", "optimizer.bin").fatal
    ds = consumer(root, "deepspeed", "global_step5/mp_rank_00_model_states.pt")
    assert ds.mode == "unsafe"
    assert consumer(root, "dcp", "__0_0.distcp").mode == "unsafe"
    assert consumer(root, "dcp", ".metadata").mode == "unsafe"
    mg = consumer(root, "megatron", "iter_0000100/mp_rank_00/model_optim_rng.pt")
    assert mg.mode == "weights_only" and "argparse.Namespace" in mg.allow
    assert consumer(root, "lightning/checkpoints", "last.ckpt").mode == "weights_only"
    assert consumer(root, "lightning_ds/epoch=0-step=6.ckpt",
                    "checkpoint/mp_rank_00_model_states.pt").mode == "unsafe"
    assert consumer(root, "peft", "adapter_model.safetensors").mode == "safetensors"
    assert consumer(root, "hf_model", "model-00001-of-00006.safetensors").mode == "safetensors"


# --- the layer stays torch-free ---------------------------------------------------------------
def test_layouts_never_import_torch(root):
    code = (
        "import sys; from pathlib import Path\n"
        "from ckptdoctor.layouts import DirView, detect_layout, find_checkpoints\n"
        f"r = Path({str(root)!r})\n"
        "for rel in find_checkpoints(DirView(r)):\n"
        "    d = DirView(r / rel); l = detect_layout(d); l.describe(d); l.check(d)\n"
        "    [l.consumer(d, f) for f in d.files]\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_accelerate_checkpoint_n_is_not_a_trainer_checkpoint(root, tmp_path):
    """diffusers-style scripts call accelerator.save_state(f"{out}/checkpoint-{step}")."""
    shutil.copytree(root / "accelerate", tmp_path / "out" / "checkpoint-6")
    layout, _, found = run(tmp_path / "out" / "checkpoint-6")
    assert layout.name == "accelerate" and layout_codes(found) == set()
    assert detect_layout(DirView(tmp_path / "out")) is None
    assert find_checkpoints(DirView(tmp_path / "out")) == ["checkpoint-6"]


def test_find_checkpoints_skips_inner_symlinks(root, tmp_path):
    shutil.copytree(root / "dcp", tmp_path / "step-9")
    (tmp_path / "latest").symlink_to(tmp_path / "step-9")
    assert find_checkpoints(DirView(tmp_path)) == ["step-9"]


GARBAGE = {
    "latest": "global_step\x00/../x", "trainer_state.json": "[1, 2]",
    "adapter_config.json": '{"peft_type": "LORA", "r": "eight", "target_modules": 7}',
    "model.safetensors.index.json": '{"weight_map": ["a"], "metadata": 5}',
    "latest_checkpointed_iteration.txt": "9" * 5000, "params.json": "{",
    "train_state_00000.json": "null", "meta.pt": "not a zip", ".metadata": "\x80\x02garbage",
    "__0_0.distcp": "", "rng_state_3.pth": "", "random_states_1.pkl": "PK",
}


@pytest.mark.parametrize("name", ["checkpoint-3", "iter_0000003", "step-3", "x.ckpt", "plain"])
def test_garbage_never_raises(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    for rel, text in GARBAGE.items():
        (d / rel).write_text(text)
    (d / "checkpoint").mkdir()
    (d / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04junk")
    (d / "dangling.ckpt").symlink_to(d / "gone")
    view = DirView(d)
    for layout in LAYOUTS:
        if layout.match(view):
            layout.describe(view).to_json()
            layout.check(view)
            [layout.consumer(view, f) for f in view.files]
    find_checkpoints(DirView(tmp_path))
