"""`repair` and `convert` run `diff --resume-equivalent` (ckptdoctor/equivalence.py over
ckptdoctor.diff.diff) as their last verification step: a faithful rewrite passes and the diff
ran on it; a rewrite made non-equivalent on purpose (a converter bug the writer's own
self-check cannot see, because it compares the output with what the buggy step meant to write)
is rejected with CK702 / CK706 naming what differs, and the original / DST stays as it was.

Checkpoints are written by torch.save / torch.distributed.checkpoint on tiny tensors. The diff is
counted with a spy that calls the real function (nothing is mocked); expectations come from
torch.load(weights_only=True) and safetensors, not from the diff."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import ckptdoctor.diff as diffmod
from ckptdoctor.cli import app
from ckptdoctor.codes import Code
from ckptdoctor.convert import ConvertError, convert
from ckptdoctor.repair import repair, rules as repair_rules

runner = CliRunner()


@pytest.fixture
def diff_calls(monkeypatch):
    """Every call of the real ckptdoctor.diff.diff, with its arguments."""
    calls: list[tuple] = []
    real = diffmod.diff

    def spy(a, b, **kw):
        calls.append((Path(a), Path(b), kw))
        return real(a, b, **kw)

    monkeypatch.setattr(diffmod, "diff", spy)
    return calls


def _scalars_file(d: Path) -> tuple[Path, dict]:
    """numpy scalars beside tensors: torch refuses the globals, repair turns them into the
    equal Python values (the numpy-scalar rule)."""
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    p = d / "state.pt"
    torch.save({**tensors, "lr": np.float32(0.5), "step": np.int64(7)}, p)
    return p, tensors


# --- repair ------------------------------------------------------------------------------------
def test_repair_runs_the_resume_diff_on_a_faithful_rewrite(tmp_path, diff_calls):
    p, tensors = _scalars_file(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(p, weights_only=True)  # what the repair is for
    result = repair(tmp_path, consumer="torch")
    assert result.exit_code == 0, result.outcomes
    (o,) = result.outcomes
    assert o.status == "replaced"
    # the diff ran once, on the original and the staged rewrite, in resume-equivalent mode
    assert len(diff_calls) == 1
    a, b, kw = diff_calls[0]
    assert a == p and b.name.endswith("state.pt") and b != p and kw["resume_equivalent"]
    # independent: the new file loads plainly, tensors bit-identical, scalars equal
    new = torch.load(p, weights_only=True)
    assert all(torch.equal(new[k], t) for k, t in tensors.items())
    assert new["lr"] == 0.5 and new["step"] == 7
    assert o.checks[-1].startswith("resume-equivalent to the original")
    assert f"{len(tensors)} tensors bit-identical" in o.checks[-1]


def test_repair_rejects_a_rewrite_the_diff_finds_different(tmp_path, diff_calls):
    """A numpy-scalar rule that returns the wrong number: the rewrite equals what the rule
    produced (so the file-level verification passes), but not the original."""
    p, _ = _scalars_file(tmp_path)
    before = p.read_bytes()
    rule = next(r for r in repair_rules.RULES if r.name == "numpy-scalar")
    good = rule.convert

    def off_by_one(v, ctx):
        out = good(v, ctx)
        return out + 1 if isinstance(out, int) and not isinstance(out, bool) else out

    object.__setattr__(rule, "convert", off_by_one)  # frozen dataclass: the bug, for this test
    try:
        result = repair(tmp_path, consumer="torch")
    finally:
        object.__setattr__(rule, "convert", good)
    assert result.exit_code == 1
    (o,) = result.outcomes
    assert o.status == "verify-failed"
    assert len(diff_calls) == 1  # rejected by the diff, after every other check passed
    (f,) = [f for f in result.findings if f.code == Code.REPAIR_VERIFY.code]
    assert "not resume-equivalent" in f.message and "step" in f.message
    assert p.read_bytes() == before  # the original is kept
    assert not any(x.name.startswith(".ckptdoctor-tmp-") for x in tmp_path.iterdir())


# --- convert -----------------------------------------------------------------------------------
def _training_file(d: Path) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(1)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3, generator=g)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 1}
    p = d / "full.pt"
    torch.save(state, p)
    return p, state


def test_convert_runs_the_resume_diff_torch_to_dcp_and_back(tmp_path, diff_calls):
    p, state = _training_file(tmp_path)
    r = convert(p, tmp_path / "dcp", "dcp")
    assert len(diff_calls) == 1 and diff_calls[0][0] == p and diff_calls[0][2]["resume_equivalent"]
    n_tensors = 2 + 3 * 2  # weight, bias; step, exp_avg, exp_avg_sq per parameter
    assert r.equivalence.ok and r.equivalence.tensors == n_tensors
    assert r.to_json()["resume_equivalent"] is True
    back = tmp_path / "back.pt"
    r2 = convert(tmp_path / "dcp", back, "torch")
    assert len(diff_calls) == 2 and r2.equivalence.ok
    loaded = torch.load(back, weights_only=True)  # independent: the round trip is exact
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert all(torch.equal(loaded["optim"]["state"][i]["exp_avg"], s["exp_avg"])
               for i, s in state["optim"]["state"].items())


def test_convert_rejects_an_output_the_diff_finds_different(tmp_path, diff_calls, monkeypatch):
    """A safetensors writer whose alias detection is wrong: `b` recorded as an alias of `w`
    and not written. The converter's own check compares the file with that plan and passes;
    the diff reads the source again and sees b differ."""
    from ckptdoctor.convert import st_emit

    g = torch.Generator().manual_seed(2)
    sd = {"w": torch.randn(3, 3, generator=g), "b": torch.randn(3, 3, generator=g)}
    src = tmp_path / "pytorch_model.bin"
    torch.save(sd, src)
    real = st_emit.dedupe

    def wrong_alias(leaves, result, origin):
        unique, aliases = real(leaves, result, origin)
        return [leaf for leaf in unique if leaf.key != "b"], {**aliases, "b": "w"}

    monkeypatch.setattr(st_emit, "dedupe", wrong_alias)
    dst = tmp_path / "model.safetensors"
    with pytest.raises(ConvertError) as exc:
        convert(src, dst, "safetensors")
    assert exc.value.finding.code == Code.CONVERT_VERIFY.code
    assert "not resume-equivalent" in exc.value.finding.message
    assert "tensor b not bit-identical" in exc.value.finding.message
    assert len(diff_calls) == 1
    assert not dst.exists() and not any(x.name.startswith(".ckptdoctor-tmp-")
                                        for x in tmp_path.iterdir())
    # the CLI: one line, CK706, non-zero exit
    res = runner.invoke(app, ["convert", str(src), str(dst), "--to", "safetensors"])
    assert res.exit_code != 0 and Code.CONVERT_VERIFY.code in res.output
    assert "Traceback" not in res.output and not dst.exists()
    # the healthy writer: written, and what it wrote is the source bit for bit
    monkeypatch.setattr(st_emit, "dedupe", real)
    r = convert(src, dst, "safetensors")
    assert r.equivalence.ok and r.equivalence.tensors == 2 and len(diff_calls) == 3
    with safe_open(str(dst), "pt") as fh:
        assert sorted(fh.keys()) == ["b", "w"]
        assert all(torch.equal(fh.get_tensor(k), sd[k]) for k in sd)


def test_convert_that_changes_values_on_request_is_not_diffed(tmp_path, diff_calls):
    """--dtype bf16 changes every value on purpose: the resume diff does not apply (the
    converter checks the cast bytes itself) and the result says so."""
    p, _ = _training_file(tmp_path)
    r = convert(p, tmp_path / "dcp16", "dcp", dtype="bf16")
    assert diff_calls == [] and r.equivalence is None
    assert r.to_json()["resume_equivalent"] is None
