"""`reshard` of a DCP directory on odd and hostile input, in one process: checkpoints written by
torch's own `dcp.save(no_dist=True)`; where a hostile one is needed, its `.metadata` is
rewritten by hand (said at each place: no library writes such a file). Each is refused with
one line and a stable code and nothing appears at DST, or, where the input is valid, the
output loads with dcp.load and holds the same values."""

from __future__ import annotations

import os
import pickle
import resource

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from typer.testing import CliRunner

from ckptdoctor.cli import app

runner = CliRunner()


def _reshard(src, dst, m, *extra):
    return runner.invoke(app, ["reshard", str(src), str(dst), "--world-size", str(m), *extra])


def _save(path, state, **writer):
    dcp.save(state, storage_writer=FileSystemWriter(str(path), **writer), no_dist=True)


def _loaded(path, like):
    out = {k: torch.empty_like(v) for k, v in like.items()}
    dcp.load(out, checkpoint_id=path, no_dist=True)
    return out


def _one_line_refusal(r, code):
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 1 and code in lines[0] and "Traceback" not in r.output, r.output


def test_float8_uint_and_empty_tensors_reshard_and_load(tmp_path):
    state = {"f8": torch.randn(6, 4).to(torch.float8_e4m3fn),
             "f8b": torch.randn(5).to(torch.float8_e5m2),
             "u16": torch.arange(12, dtype=torch.int32).reshape(3, 4).to(torch.uint16),
             "bf": torch.randn(7, 3).to(torch.bfloat16), "empty": torch.empty(0, 4),
             "scalar": torch.tensor(3.0), "lora_rank8.A": torch.randn(4, 2)}
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src, state)
    r = _reshard(src, dst, 3, "--strict")  # lora_rank8 is a name, not per-rank state
    assert r.exit_code == 0, r.output
    got = _loaded(dst, state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8),
                           v.reshape(-1).view(torch.uint8)), k


def test_several_files_per_rank_are_resharded(tmp_path):
    """A save with thread_count=2 writes __0_0.distcp and __0_1.distcp for one rank."""
    state = {f"w{i}": torch.randn(8, 4) for i in range(6)}
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src, state, thread_count=2)
    assert len(list(src.glob("__0_*.distcp"))) == 2
    r = _reshard(src, dst, 2)
    assert r.exit_code == 0, r.output
    got = _loaded(dst, state)
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_a_huge_declared_size_is_refused_before_anything_is_allocated(tmp_path):
    """Hand-made hostile .metadata: a 7x4 tensor declared as 2**26 x 4 (1 GiB of float32)."""
    src = tmp_path / "src"
    _save(src, {"w": torch.randn(7, 4)})
    md = FileSystemReader(str(src)).read_metadata()  # our own file, just written by dcp.save
    meta = md.state_dict_metadata["w"]
    meta.size = torch.Size((1 << 26, 4))
    meta.chunks[0].sizes = torch.Size((1 << 26, 4))
    with open(src / ".metadata", "wb") as fh:
        pickle.dump(md, fh)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = _reshard(src, tmp_path / "dst", 3)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    _one_line_refusal(r, "CK7")
    assert grew < (256 << 20) and not (tmp_path / "dst").exists()


class _Payload:
    """Pickles as a call of os.getcwd: not a data type, so the loader chain refuses it."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("extra", [(), ("--no-verify",)])
def test_a_code_executing_item_is_refused_with_or_without_verification(tmp_path, extra):
    src = tmp_path / "src"
    _save(src, {"w": torch.randn(4, 2), "obj": _Payload()})
    r = _reshard(src, tmp_path / "dst", 2, *extra)
    _one_line_refusal(r, "CK")
    assert "getcwd" in r.output and not (tmp_path / "dst").exists()


def test_symbolic_links_are_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    src = tmp_path / "src"
    _save(src, {"w": torch.randn(4, 2)})
    (src / "notes.txt").symlink_to(outside)
    r = _reshard(src, tmp_path / "dst", 2)
    _one_line_refusal(r, "CK734")
    assert "symbolic link" in r.output and not (tmp_path / "dst").exists()
    (src / "notes.txt").unlink()
    shard = src / "__0_0.distcp"
    moved = tmp_path / "elsewhere.distcp"
    shard.rename(moved)
    shard.symlink_to(moved)  # a storage file that leaves the directory
    r = _reshard(src, tmp_path / "dst", 2)
    _one_line_refusal(r, "CK821")
    assert not (tmp_path / "dst").exists()


def test_dst_inside_src_or_src_inside_dst_is_refused(tmp_path):
    src = tmp_path / "run" / "ckpt"
    _save(src, {"w": torch.randn(4, 2)})
    before = sorted(p.name for p in src.iterdir())
    for dst in (tmp_path / "run", src / "out"):
        r = _reshard(src, dst, 2, "--overwrite")
        _one_line_refusal(r, "CK734")
        assert "inside one another" in r.output
    assert sorted(p.name for p in src.iterdir()) == before


def test_a_shard_cut_short_is_refused(tmp_path):
    src = tmp_path / "src"
    _save(src, {"w": torch.randn(64, 4)})
    shard = src / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:200])
    r = _reshard(src, tmp_path / "dst", 2)
    _one_line_refusal(r, "CK7")
    assert "__0_0.distcp holds 200 bytes" in r.output


def test_older_torch_plan_check_contract(tmp_path, monkeypatch):
    """torch before the list-of-problems contract returned True for a valid global plan."""
    import torch.distributed.checkpoint.default_planner as planner

    src = tmp_path / "src"
    _save(src, {"w": torch.randn(4, 2)})
    monkeypatch.setattr(planner, "_validate_global_plan", lambda plans, md: True)
    assert _reshard(src, tmp_path / "ok", 2).exit_code == 0
    monkeypatch.setattr(planner, "_validate_global_plan", lambda plans, md: False)
    r = _reshard(src, tmp_path / "bad", 2)
    _one_line_refusal(r, "CK734")
    assert "DCP rejects the new layout" in r.output and not (tmp_path / "bad").exists()
