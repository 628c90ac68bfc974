"""`convert` on the checkpoints users really have, checked by the real consumer and by an
independent comparison (tensors read back with safetensors' own loader and compared with
torch.equal, never with ckptdoctor's codec):

- a transformers Trainer `checkpoint-2/` (model.safetensors + optimizer.pt ...) -> safetensors,
  the README's own example, resharded, cast and renamed through the CLI -> from_pretrained;
- config / generation config / tokenizer carried from the checkpoint or its run directory, a
  Trainer + DeepSpeed ZeRO-2 checkpoint -> AutoModelForCausalLM.from_pretrained;
- `--weights-only` salvage of a checkpoint whose optimizer save was cut short."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from ckptdoctor.cli import app
from tests.ranks import launch

warnings.filterwarnings("ignore")
runner = CliRunner()
JOB = Path(__file__).parent / "realhf" / "trainer_job.py"
ROOT = Path(__file__).resolve().parents[1]


def _train(mode: str, out: Path) -> Path:
    launch(JOB, mode, out, world=1, env={"PYTHONPATH": str(ROOT)})
    return out / "checkpoint-2"


@pytest.fixture(scope="module")
def trainer_ckpt(tmp_path_factory):
    return _train("plain", tmp_path_factory.mktemp("hf") / "out")


@pytest.fixture(scope="module")
def trainer_ds_ckpt(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    return _train("deepspeed", tmp_path_factory.mktemp("hfds") / "out")


def _cli(*args: str):
    r = runner.invoke(app, ["convert", *map(str, args)])
    return r


def _logits(model, dtype=None):
    x = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        return model(x).logits


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file / directory, read by safetensors itself."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


# --- 1. safetensors -> safetensors ---------------------------------------------------------------
def test_readme_example_on_a_trainer_checkpoint_gives_equal_logits(trainer_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    dst = tmp_path / "hf_model"
    r = _cli(trainer_ckpt, dst, "--to", "safetensors")
    assert r.exit_code == 0, r.output
    src = _tensors(trainer_ckpt / "model.safetensors")
    out = _tensors(dst)
    assert set(out) == set(src)
    assert all(torch.equal(out[k], src[k]) and out[k].dtype == src[k].dtype for k in src)
    ref = AutoModelForCausalLM.from_pretrained(trainer_ckpt)
    got = AutoModelForCausalLM.from_pretrained(dst)
    assert torch.equal(_logits(ref), _logits(got))


def test_reshard_and_cast_to_bf16_gives_the_cast_models_logits(trainer_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    dst = tmp_path / "bf16"
    r = _cli(trainer_ckpt, dst, "--to", "safetensors", "--max-shard-size", "30KB",
             "--dtype", "bf16")
    assert r.exit_code == 0, r.output
    shards = sorted(dst.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    src = _tensors(trainer_ckpt / "model.safetensors")
    assert set(index["weight_map"]) == set(src)
    for name, shard in index["weight_map"].items():
        with safe_open(dst / shard, "pt") as f:
            t = f.get_tensor(name)
        assert t.dtype == torch.bfloat16 and torch.equal(t, src[name].to(torch.bfloat16)), name
        assert os.path.getsize(dst / shard) < 30_000 + 2_000 or len(
            [n for n, s in index["weight_map"].items() if s == shard]) == 1
    # the source model cast by transformers itself (fp32 weights cast to bf16 on load)
    ref = AutoModelForCausalLM.from_pretrained(trainer_ckpt, dtype=torch.bfloat16)
    got = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16)
    assert next(got.parameters()).dtype == torch.bfloat16
    assert torch.equal(_logits(ref), _logits(got))


def test_strip_and_add_prefix_rename_through_the_cli(trainer_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    renamed = tmp_path / "renamed"
    r = _cli(trainer_ckpt, renamed, "--to", "safetensors", "--strip-prefix", "model.",
             "--add-prefix", "backbone.")
    assert r.exit_code == 0, r.output
    src = _tensors(trainer_ckpt / "model.safetensors")
    out = _tensors(renamed)
    assert set(out) == {"backbone." + k[len("model."):] for k in src if k.startswith("model.")}
    for k, t in src.items():
        if k.startswith("model."):
            assert torch.equal(out["backbone." + k[len("model."):]], t)
    # and back, safetensors -> safetensors again: the original names, a loadable model
    back = tmp_path / "back"
    assert _cli(renamed, back, "--to", "safetensors", "--strip-prefix", "backbone.",
                "--add-prefix", "model.").exit_code == 0
    shutil.copy(trainer_ckpt / "config.json", back / "config.json")
    got = AutoModelForCausalLM.from_pretrained(back)
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(trainer_ckpt)), _logits(got))


def test_dtype_is_a_closed_choice(trainer_ckpt, tmp_path):
    r = _cli(trainer_ckpt, tmp_path / "x", "--to", "safetensors", "--dtype", "int8")
    assert r.exit_code == 2 and not (tmp_path / "x").exists()
    assert "bf16" in r.output and "fp32" in r.output


def test_aliases_survive_safetensors_to_safetensors(tmp_path):
    """A tied file written by ckptdoctor (alias in __metadata__) stays tied after resharding."""
    from transformers import LlamaForCausalLM

    try:
        from tests.fixtures import factory as F
    except ImportError:
        from fixtures import factory as F
    model = F.tiny_llama(0)
    src = tmp_path / "src.pt"
    torch.save(model.state_dict(), src)
    first = tmp_path / "first.safetensors"
    assert _cli(src, first, "--to", "safetensors").exit_code == 0
    dst = tmp_path / "resharded"
    r = _cli(first, dst, "--to", "safetensors", "--max-shard-size", "20KB")
    assert r.exit_code == 0, r.output
    model.config.save_pretrained(dst)
    loaded = LlamaForCausalLM.from_pretrained(dst)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(_logits(model), _logits(loaded))


# --- 2. config and tokenizer carried -------------------------------------------------------------
@pytest.mark.oracle  # longer matrix (make oracle): a Trainer + DeepSpeed run, ~1 min
def test_trainer_deepspeed_checkpoint_loads_with_auto_model(trainer_ds_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (trainer_ds_ckpt / "latest").is_file()  # detected as DeepSpeed, not as model.safetensors
    dst = tmp_path / "hf"
    r = _cli(trainer_ds_ckpt, dst, "--to", "safetensors")
    assert r.exit_code == 0, r.output
    assert "(deepspeed)" in r.output and "CK730" in r.output
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (dst / name).read_bytes() == (trainer_ds_ckpt / name).read_bytes(), name
        assert name in r.output
    got = AutoModelForCausalLM.from_pretrained(dst)
    # ZeRO-2 in fp32: the consolidated master weights are the weights the Trainer saved
    ref = AutoModelForCausalLM.from_pretrained(trainer_ds_ckpt)
    assert torch.equal(_logits(ref), _logits(got))
    tok = AutoTokenizer.from_pretrained(dst)
    assert tok("w5 w7")["input_ids"] == [5, 7]


def test_config_comes_from_the_run_directory(trainer_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    ckpt = run / "checkpoint-2"
    shutil.copytree(trainer_ckpt, ckpt)
    (ckpt / "config.json").rename(run / "config.json")  # a run that keeps it in the run dir
    dst = tmp_path / "hf"
    r = _cli(ckpt, dst, "--to", "safetensors")
    assert r.exit_code == 0, r.output
    assert f"config.json from {run}" in " ".join(r.output.split())
    AutoModelForCausalLM.from_pretrained(dst)
    # no config anywhere: converted, and told that from_pretrained will not load it
    (run / "config.json").unlink()
    r = _cli(ckpt, tmp_path / "noconf", "--to", "safetensors")
    assert r.exit_code == 0 and "CK731" in r.output


# --- 4. --weights-only salvage -------------------------------------------------------------------
def _truncate(path: Path) -> None:
    """A save killed part-way: the file stops at half its length (hand-cut: no library writes
    a partial file on purpose)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.oracle  # longer matrix (make oracle): shares the Trainer + DeepSpeed run
def test_weights_only_salvages_a_deepspeed_checkpoint_cut_short(trainer_ds_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trainer_ds_ckpt, ckpt)
    optim = next((ckpt / "global_step2").glob("*_optim_states.pt"))
    _truncate(optim)
    (ckpt / "latest").unlink()  # DeepSpeed writes `latest` after the rank files
    r = _cli(ckpt, tmp_path / "refused", "--to", "safetensors")
    assert r.exit_code == 1 and not (tmp_path / "refused").exists()
    assert "--weights-only" in r.output
    dst = tmp_path / "salvaged"
    r = _cli(ckpt, dst, "--to", "safetensors", "--weights-only")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "CK732" in text and "global_step2/ incomplete" in text
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in text and "no `latest`" in text
    assert "rng_state.pth complete" in text
    src = _tensors(ckpt / "model.safetensors")
    out = _tensors(dst)
    assert set(out) == set(src) and all(torch.equal(out[k], src[k]) for k in src)
    AutoModelForCausalLM.from_pretrained(dst)


def test_weights_only_lists_a_truncated_optimizer_pt(trainer_ckpt, tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trainer_ckpt, ckpt)
    _truncate(ckpt / "optimizer.pt")
    r = _cli(ckpt, tmp_path / "w.safetensors", "--to", "safetensors", "--weights-only")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "optimizer.pt incomplete" in text and "scheduler.pt complete" in text
    assert "model.safetensors" not in text.split("CK732")[1].split("hint")[0]
    src = _tensors(ckpt / "model.safetensors")
    out = _tensors(tmp_path / "w.safetensors")
    assert set(out) == set(src) and all(torch.equal(out[k], src[k]) for k in src)
    # the weights themselves cut short: nothing is exported
    _truncate(ckpt / "model.safetensors")
    r = _cli(ckpt, tmp_path / "none", "--to", "safetensors", "--weights-only")
    assert r.exit_code == 1 and not (tmp_path / "none").exists()


def test_add_prefix_on_torch_sources_and_options_a_pair_does_not_take(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    src = tmp_path / "sd.pt"
    torch.save(state, src)
    st = tmp_path / "sd.safetensors"
    r = _cli(src, st, "--to", "safetensors", "--add-prefix", "enc.")
    assert r.exit_code == 0, r.output
    out = load_file(st)
    assert set(out) == {"enc.w", "enc.b"} and torch.equal(out["enc.w"], state["w"])
    back = tmp_path / "back.pt"
    r = _cli(st, back, "--to", "torch", "--strip-prefix", "enc.", "--add-prefix", "dec.")
    assert r.exit_code == 0, r.output
    loaded = torch.load(back, weights_only=True)
    assert set(loaded) == {"dec.w", "dec.b"} and torch.equal(loaded["dec.b"], state["b"])
    # refused, nothing written: DCP-only options on a safetensors output, --weights-only on a file
    for extra in (["--nest", "model"], ["--params", str(src)], ["--weights-only"]):
        r = _cli(src, tmp_path / "no.safetensors", "--to", "safetensors", *extra)
        assert r.exit_code == 1 and "CK705" in r.output, (extra, r.output)
        assert not (tmp_path / "no.safetensors").exists()
