"""Golden CLI cases: one real checkpoint per layout (written by the real library inside the
test, or hand-built where the framework is not installable: see tests/fixtures/factory.py),
`inspect --json` and `validate --format json` run through the CLI, and a stable projection of
the output compared with tests/golden/<case>.json.

Adding a regression case is two lines: a builder below and `UPDATE_GOLDEN=1 pytest
tests/test_golden.py` to write its expected file (review it before committing)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.formats import detect_file
from ckptdoctor.standins import resolve_allowlist
from tests.fixtures import factory as fx

GOLDEN = Path(__file__).parent / "golden"
NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"
runner = CliRunner()


def _hf_numpy1(d: Path) -> Path:
    """An HF Trainer checkpoint whose rng_state.pth / training_args.bin were written by
    numpy 1.x (real files from tests/fixtures/numpy1, made by a numpy 1.26 environment)."""
    ckpt = fx.make_hf_trainer_run(d, steps=2, save_steps=2) / "checkpoint-2"
    shutil.copy(NUMPY1 / "rng_state.pth", ckpt / "rng_state.pth")
    shutil.copy(NUMPY1 / "training_args.bin", ckpt / "training_args.bin")
    return ckpt


def _accelerate_numpy1(d: Path) -> Path:
    out = fx.make_accelerate_state(d)
    shutil.copy(NUMPY1 / "random_states_0.pkl", out / "random_states_0.pkl")
    return out


def _hf_cut_short(d: Path) -> Path:
    """The newest checkpoint of a run killed mid-save: trainer_state.json (written last) is
    missing and one weight shard is cut."""
    run = fx.make_hf_trainer_run(d, steps=4, save_steps=2)
    ckpt = run / "checkpoint-4"
    (ckpt / "trainer_state.json").unlink()
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    return run


def _hf_damaged(damage):
    """A real HF Trainer checkpoint with one kind of damage applied."""
    def build(d: Path) -> Path:
        ckpt = fx.make_hf_trainer_run(d, steps=2, save_steps=2) / "checkpoint-2"
        damage(ckpt)
        return ckpt
    return build


def _cut(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def _header_length(ckpt: Path) -> None:
    p = ckpt / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes((len(data) * 2).to_bytes(8, "little") + data[8:])


def _offsets_past_end(ckpt: Path) -> None:
    p = ckpt / "model.safetensors"
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    last = max(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1]
    )
    header[last]["data_offsets"][1] += 64
    raw = json.dumps(header).encode()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _poison(ckpt: Path) -> None:
    """training_args.bin replaced by a pickle that would run `true` if loaded (it never is).
    Hand-built: no library writes hostile files."""
    payload = (b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    (ckpt / "training_args.bin").write_bytes(payload)


def _stray_tmp(d: Path) -> Path:
    """A run whose save of step 4 died while staging (transformers' tmp-checkpoint-* dir)."""
    run = fx.make_hf_trainer_run(d, steps=2, save_steps=2)
    (run / "tmp-checkpoint-4").mkdir()
    (run / "tmp-checkpoint-4" / "model.safetensors").write_bytes(b"")
    return run


def _missing_shard(d: Path) -> Path:
    model = fx.make_hf_model(d, sharded=True)
    sorted(model.glob("model-*.safetensors"))[1].unlink()
    return model


def _ds_missing_optim(d: Path) -> Path:
    ds = fx.make_deepspeed(d, stage=2)
    next(ds.glob("global_step5/*rank_1*_optim_states.pt")).unlink()
    return ds


CASES = {
    "damaged_truncated_torch_zip": _hf_damaged(lambda c: _cut(c / "optimizer.pt")),
    "damaged_truncated_safetensors": _hf_damaged(lambda c: _cut(c / "model.safetensors")),
    "damaged_header_length": _hf_damaged(_header_length),
    "damaged_offsets_past_end": _hf_damaged(_offsets_past_end),
    "damaged_missing_rng_state": _hf_damaged(lambda c: (c / "rng_state.pth").unlink()),
    "damaged_zero_byte_scheduler": _hf_damaged(lambda c: (c / "scheduler.pt").write_bytes(b"")),
    "damaged_stray_tmp_dir": _stray_tmp,
    "damaged_poisoned_training_args": _hf_damaged(_poison),
    "damaged_index_missing_shard": _missing_shard,
    "damaged_deepspeed_missing_optim_shard": _ds_missing_optim,
    "torch_zip": lambda d: fx.make_torch_zip(d),
    "torch_legacy": lambda d: fx.make_torch_legacy(d),
    "numpy_state": lambda d: fx.make_numpy_state(d),
    "safetensors": lambda d: fx.make_safetensors(d),
    "hf_model_sharded": lambda d: fx.make_hf_model(d, sharded=True),
    "hf_model_bin_sharded": lambda d: fx.make_hf_model(d, sharded=True, safe=False),
    "hf_run": lambda d: fx.make_hf_trainer_run(d, steps=4, save_steps=2),
    "hf_run_cut_short": _hf_cut_short,
    "hf_checkpoint": lambda d: fx.make_hf_trainer_run(d, steps=2, save_steps=2) / "checkpoint-2",
    "hf_checkpoint_numpy1": _hf_numpy1,
    "accelerate": lambda d: fx.make_accelerate_state(d),
    "accelerate_numpy1": _accelerate_numpy1,
    "peft": lambda d: fx.make_peft_adapter(d),
    "peft_empty": lambda d: fx.make_peft_adapter(d, empty=True),
    "lightning_namespace": lambda d: fx.make_lightning_ckpt(d),
    "lightning_clean": lambda d: fx.make_lightning_ckpt(d, hparams_namespace=False),
    "dcp": lambda d: fx.make_dcp(d),
    "lingua": lambda d: fx.make_lingua(d),
    "torchtitan": lambda d: fx.make_torchtitan(d) / "checkpoint" / "step-10",
    "megatron_torch": lambda d: fx.make_megatron(d, fmt="torch"),
    "megatron_torch_dist": lambda d: fx.make_megatron(d, fmt="torch_dist"),
    "llama_recipes_fsdp": lambda d: fx.make_llama_recipes_fsdp(d),
    "deepspeed_zero2": lambda d: fx.make_deepspeed(d, stage=2),
    "deepspeed_zero3": lambda d: fx.make_deepspeed(d, stage=3),
}


# torch zip files per case that torch.load(weights_only=True) reads (hand-counted from what
# each builder writes: e.g. an HF Trainer checkpoint has optimizer.pt, scheduler.pt,
# rng_state.pth and training_args.bin; a truncated file is no longer a zip; DCP shards and
# safetensors are not torch zips).
TORCH_ZIPS = {
    "accelerate": 3, "accelerate_numpy1": 3, "damaged_deepspeed_missing_optim_shard": 2,
    "damaged_header_length": 4, "damaged_index_missing_shard": 0, "damaged_missing_rng_state": 3,
    "damaged_offsets_past_end": 4, "damaged_poisoned_training_args": 3,
    "damaged_stray_tmp_dir": 4, "damaged_truncated_safetensors": 4,
    "damaged_truncated_torch_zip": 3, "damaged_zero_byte_scheduler": 3, "dcp": 0,
    "deepspeed_zero2": 3, "deepspeed_zero3": 4, "hf_checkpoint": 4, "hf_checkpoint_numpy1": 4,
    "hf_model_bin_sharded": 6, "hf_model_sharded": 0, "hf_run": 8, "hf_run_cut_short": 8,
    "lightning_clean": 1, "lightning_namespace": 1, "lingua": 1, "llama_recipes_fsdp": 0,
    "megatron_torch": 1, "megatron_torch_dist": 1, "numpy_state": 1, "peft": 0, "peft_empty": 0,
    "safetensors": 0, "torch_legacy": 0, "torch_zip": 1, "torchtitan": 0,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return {name: make(root / name) for name, make in CASES.items()}


def project(inspect_doc: dict, validate_doc: dict, validate_rc: int) -> dict:
    """The stable part of the output: what a golden file pins down."""
    return {
        "layout": inspect_doc["layout"]["name"],
        "step": inspect_doc["layout"]["step"],
        "checkpoints": sorted((c["path"], c["name"], c["step"])
                              for c in inspect_doc["checkpoints"]),
        "files": {f["path"]: [f["format"], None if f["weights_only"] is None else
                              f["weights_only"]["loads"],
                              sorted(f["weights_only"]["allowlist"]) if f["weights_only"] else []]
                  for f in inspect_doc["files"]},
        "inspect_findings": sorted({(f["code"], f["path"]) for f in inspect_doc["findings"]}),
        "validate_rc": validate_rc,
        "validate_findings": sorted({(f["code"], f["severity"], f["path"])
                                     for f in validate_doc["findings"]}),
    }


def _roundtrip(value):
    return json.loads(json.dumps(value))


def _outcome(built, case) -> dict:
    path = built[case]
    r1 = runner.invoke(app, ["inspect", "--json", str(path)])
    dangerous = any(f["code"] == "CK101" for f in json.loads(r1.stdout)["findings"])
    assert r1.exit_code == (1 if dangerous else 0), r1.output  # inspect exits 1 on a payload
    r2 = runner.invoke(app, ["validate", "--format", "json", str(path)])
    assert r2.exit_code in (0, 1), r2.output
    return _roundtrip(project(json.loads(r1.stdout), json.loads(r2.stdout), r2.exit_code))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(built, case):
    got = _outcome(built, case)
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {golden.name}: review it; nothing was compared (UPDATE_GOLDEN)")
    if not golden.exists():
        pytest.fail(f"no golden file {golden}; run with UPDATE_GOLDEN=1 and review it")
    assert got == json.loads(golden.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_reported_allowlist_loads_every_torch_zip(built, case):
    """For every torch zip of every fixture, the allow-list inspect reports makes
    torch.load(weights_only=True) succeed under torch.serialization.safe_globals."""
    root = built[case]
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    checked = 0
    for p in files:
        info = detect_file(p, p.name)
        if info.format != "torch-zip" or info.weights_only is None:
            continue
        v = info.weights_only
        if not v.fixable:
            continue
        names = v.allowlist
        with torch.serialization.safe_globals(resolve_allowlist(names, user_vouched=names)):
            torch.load(p, weights_only=True, map_location="cpu")
        checked += 1
    # independently of ckptdoctor: zip archives holding a data.pkl, DCP shards (.distcp, also
    # torch-serialized zips but never torch.load'ed) aside
    zips = 0
    for p in files:
        if p.suffix != ".distcp" and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                zips += any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    assert zips == TORCH_ZIPS[case], f"{case}: the fixture changed: {zips} torch zips"
    assert checked == TORCH_ZIPS[case], (
        f"{case}: {checked} of {TORCH_ZIPS[case]} torch zips checked"
    )


def _has(got: dict, code: str, path: str) -> bool:
    return any(c == code and p == path for c, _, p in got["validate_findings"])


# Hand-written expectations for the key cases: what each damage must produce, stated from the
# damage itself, so a golden file regenerated over a regression (UPDATE_GOLDEN) cannot hide it.
KEY_CASES = {
    "hf_checkpoint": lambda g: (
        g["layout"] == "hf-trainer" and g["step"] == 2 and g["validate_rc"] == 0
        and g["files"]["optimizer.pt"][:2] == ["torch-zip", True]
        and g["files"]["model.safetensors"][0] == "safetensors"
        and g["files"]["rng_state.pth"][1] is False),  # numpy arrays need an allow-list
    "hf_checkpoint_numpy1": lambda g: g["validate_rc"] == 1 and _has(g, "CK601", "rng_state.pth"),
    "damaged_truncated_safetensors": lambda g: (
        g["validate_rc"] == 1 and _has(g, "CK305", "model.safetensors")),
    "damaged_truncated_torch_zip": lambda g: (
        g["validate_rc"] == 1 and _has(g, "CK201", "optimizer.pt")),
    "damaged_zero_byte_scheduler": lambda g: (
        g["validate_rc"] == 1 and _has(g, "CK003", "scheduler.pt")),
    "damaged_poisoned_training_args": lambda g: (
        g["validate_rc"] == 1 and _has(g, "CK101", "training_args.bin")),
    "damaged_index_missing_shard": lambda g: g["validate_rc"] == 1 and any(
        c == "CK402" for c, _, _ in g["validate_findings"]),
    "damaged_deepspeed_missing_optim_shard": lambda g: g["validate_rc"] == 1 and any(
        c == "CK409" for c, _, _ in g["validate_findings"]),
    "deepspeed_zero2": lambda g: g["layout"] == "deepspeed" and g["step"] == 5
        and g["validate_rc"] == 0,
    "torch_zip": lambda g: g["validate_rc"] == 0
        and g["files"]["model.pt"][:2] == ["torch-zip", True],
}


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_key_cases_by_hand(built, case):
    got = _outcome(built, case)
    assert KEY_CASES[case](got), json.dumps(got, indent=1)
