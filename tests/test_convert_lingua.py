"""Seed 004: a consolidated state dict converted to DCP for Lingua's `init_ckpt_path`.

Lingua (facebookresearch/lingua, lingua/checkpoint.py `load_from_checkpoint`, called from
apps/main/train.py with model_key="model") checks for `.metadata`, builds
`{"model": get_model_state_dict(model)}` and calls `dcp.load(state_dict, checkpoint_id=...)`.
`lingua_init` below mirrors it line for line (lingua is not installed here); the model mirrors
LMTransformer's parameter names. Lingua's consolidated loader builds the model from
params.json's `model` section, which `--params` writes."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from typer.testing import CliRunner

from ckptdoctor.cli import app

warnings.filterwarnings("ignore")
runner = CliRunner()


@dataclass
class Args:
    dim: int = 16
    n_layers: int = 2
    vocab_size: int = 64


class Block(nn.Module):
    def __init__(self, a: Args):
        super().__init__()
        self.attention = nn.Module()
        for n in ("wq", "wk", "wv", "wo"):
            setattr(self.attention, n, nn.Linear(a.dim, a.dim, bias=False))
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(a.dim, 2 * a.dim, bias=False)
        self.feed_forward.w2 = nn.Linear(2 * a.dim, a.dim, bias=False)
        self.attention_norm = nn.RMSNorm(a.dim)
        self.ffn_norm = nn.RMSNorm(a.dim)


class LMTransformer(nn.Module):
    def __init__(self, a: Args):
        super().__init__()
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.norm = nn.RMSNorm(a.dim)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)


def lingua_init(ckpt_dir: str, model: nn.Module, model_key: str = "model") -> None:
    """lingua.checkpoint.load_from_checkpoint(ckpt_dir, model, optimizer=None, model_key)."""
    if not (Path(ckpt_dir) / ".metadata").exists():
        raise ValueError("Please convert the checkpoint distcp format")
    state_dict = {}
    state_dict[model_key] = get_model_state_dict(model)
    if model_key == "":
        state_dict = state_dict.pop(model_key)
    dcp.load(state_dict, checkpoint_id=ckpt_dir)


def _fresh(seed: int) -> LMTransformer:
    torch.manual_seed(seed)
    return LMTransformer(Args())


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def consolidated(tmp_path):
    model = _fresh(0)
    path = tmp_path / "consolidated.pth"
    torch.save(model.state_dict(), path)  # a consolidated checkpoint: the flat state dict
    params = tmp_path / "train_config.json"
    params.write_text(json.dumps({"name": "seed004", "model": asdict(Args()),
                                  "distributed": {"model_dtype": "fp32"}}))
    return model, path, params


def test_without_nest_lingua_init_fails_as_in_the_report(consolidated, tmp_path):
    _, path, _ = consolidated
    dst = tmp_path / "dcp"
    assert runner.invoke(app, ["convert", str(path), str(dst), "--to", "dcp"]).exit_code == 0
    with pytest.raises(CheckpointException) as info:  # one failure per rank
        lingua_init(str(dst), _fresh(1))
    failures = getattr(info.value, "failures", {})
    assert "Missing key in checkpoint state_dict: model.tok_embeddings.weight" in (
        str(info.value) + " ".join(map(repr, failures.values())))


def test_nest_model_and_params_make_lingua_init_succeed(consolidated, tmp_path):
    model, path, params = consolidated
    dst = tmp_path / "init_ckpt"
    r = runner.invoke(app, ["convert", str(path), str(dst), "--to", "dcp", "--nest", "model",
                            "--params", str(params)])
    assert r.exit_code == 0, r.output
    target = _fresh(1)
    assert not _equal(model, target)
    lingua_init(str(dst), target)
    assert _equal(model, target)
    # params.json is the given config; the consumer builds the same model from its `model`
    doc = json.loads((dst / "params.json").read_text())
    assert doc == json.loads(params.read_text())
    assert Args(**doc["model"]) == Args()


def test_add_prefix_is_the_flat_equivalent(consolidated, tmp_path):
    model, path, _ = consolidated
    dst = tmp_path / "prefixed"
    r = runner.invoke(app, ["convert", str(path), str(dst), "--to", "dcp", "--add-prefix",
                            "model."])
    assert r.exit_code == 0, r.output
    target = _fresh(2)
    lingua_init(str(dst), target)
    assert _equal(model, target)


def test_safetensors_source_to_lingua_dcp(consolidated, tmp_path):
    model, _, params = consolidated
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, src)
    dst = tmp_path / "from_st"
    r = runner.invoke(app, ["convert", str(src), str(dst), "--to", "dcp", "--nest", "model",
                            "--params", str(params)])
    assert r.exit_code == 0, r.output
    target = _fresh(3)
    lingua_init(str(dst), target)
    assert _equal(model, target)


def test_params_without_model_section_is_reported(consolidated, tmp_path):
    _, path, _ = consolidated
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"dim": 16}))
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "d"), "--to", "dcp", "--nest",
                            "model", "--params", str(bad)])
    assert r.exit_code == 0 and "CK733" in r.output
    notjson = tmp_path / "p.txt"
    notjson.write_text("dim: [")
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "e"), "--to", "dcp",
                            "--params", str(notjson)])
    assert r.exit_code == 1 and not (tmp_path / "e").exists()
    r = runner.invoke(app, ["convert", str(path), str(tmp_path / "f"), "--to", "dcp", "--nest",
                            "a.b"])
    assert r.exit_code == 1 and "CK705" in r.output and not (tmp_path / "f").exists()
