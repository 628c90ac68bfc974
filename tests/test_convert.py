"""`ckptdoctor convert` against the real consumers of its outputs: transformers'
from_pretrained on converted shards (same logits), torch.distributed.checkpoint.load on a
converted DCP (same model + optimizer), torch.load(weights_only=True) on converted torch files,
and DeepSpeed's merge rules on hand-built ZeRO-2/3 checkpoints. Every conversion runs with
verification on; a memory test runs the conversion of a ~400 MB file in a child process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ckptdoctor.convert import ConvertError, convert, render_result
from ckptdoctor.convert.codec import deep_equal
from ckptdoctor.formats.torch_zip import check_crc, scan_zip
from ckptdoctor.loaders import safe_load

try:
    from tests.fixtures import factory as F
    from tests.oracle import assert_same, differences
except ImportError:
    from fixtures import factory as F
    from oracle import assert_same, differences

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def _same(a, b) -> None:
    """The independent oracle (tests/oracle), never the product's own deep_equal."""
    assert_same(a, b)


def _tiny_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    return model, opt


# --- transformers ---------------------------------------------------------------------------
def test_sharded_bin_to_sharded_safetensors_gives_same_logits(tmp_path):
    from transformers import LlamaForCausalLM

    model = F.tiny_llama(0)  # tie_word_embeddings=True
    src = tmp_path / "hf_bin"
    src.mkdir()
    model.config.save_pretrained(src)
    # transformers 4.x save_pretrained(safe_serialization=False, max_shard_size="30KB")
    F._save_state_dict_as_bin(model, src, "30KB")
    assert (src / "pytorch_model.bin.index.json").is_file()

    dst = tmp_path / "hf_st"
    result = convert(src, dst, "safetensors", max_shard_size="30KB")
    assert result.verified and "config.json" in result.copied
    assert result.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    shards = sorted(dst.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert "lm_head.weight" not in index["weight_map"]
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for k, t in model.state_dict().items()
        if k != "lm_head.weight")
    for shard in shards:
        with safe_open(shard, "pt") as f:
            assert f.metadata()["format"] == "pt"

    loaded = LlamaForCausalLM.from_pretrained(dst)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


# --- torch <-> safetensors -----------------------------------------------------------------------
def _odd_state_dict():
    emb = torch.randn(50, 8)
    base = torch.randn(6, 10)
    return {
        "embed.weight": emb, "head.weight": emb,  # tied
        "t": base.t(),  # non-contiguous view
        "part": base[2:4],  # view into another storage
        "bf": torch.randn(3, 5).to(torch.bfloat16), "half": torch.randn(4).half(),
        "ints": torch.arange(7), "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.empty(0, 3),
        "u8": torch.arange(5).to(torch.uint8),
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_to_safetensors_to_torch_is_bit_identical(tmp_path, legacy):
    sd = _odd_state_dict()
    src = tmp_path / "model.pt"
    torch.save(sd, src, _use_new_zipfile_serialization=not legacy)
    st = tmp_path / "model.safetensors"
    ticks = []
    r1 = convert(src, st, "safetensors", progress=lambda label, n: ticks.append((label, n)))
    assert r1.verified and r1.aliases == {"head.weight": "embed.weight"}
    for label in ("write", "verify"):  # the progress callback sees every byte, twice
        assert sum(n for lab, n in ticks if lab == label) == r1.bytes
    with safe_open(st, "pt") as f:
        assert f.metadata() == {"format": "pt", "head.weight": "embed.weight"}
        for k in f.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__/__contains__
            got = f.get_tensor(k)
            assert got.dtype == sd[k].dtype and torch.equal(got, sd[k]), k

    back = tmp_path / "back.pt"
    r2 = convert(st, back, "torch")
    assert r2.verified
    out = torch.load(back, weights_only=True)  # plain weights_only, nothing allow-listed
    assert list(sorted(out)) == sorted(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    assert out["head.weight"].data_ptr() == out["embed.weight"].data_ptr()  # tie restored
    # the streaming writer's file is what torch.save writes: clean scan, CRCs, 64-byte alignment
    info = scan_zip(back, "back.pt")
    assert info.findings == [] and info.weights_only.loads
    assert check_crc(back, "back.pt") == []
    assert torch.equal(torch.load(back, weights_only=True, mmap=True)["t"], sd["t"])
    import zipfile

    with zipfile.ZipFile(back) as zf, open(back, "rb") as fh:
        for rec in zf.infolist():
            if "/data/" in rec.filename:
                fh.seek(rec.header_offset + 26)
                n, m = (int.from_bytes(fh.read(2), "little") for _ in range(2))
                assert (rec.header_offset + 30 + n + m) % 64 == 0


def test_non_tensors_go_to_a_sidecar_or_are_dropped(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(3), "epoch": 3, "cfg": {"lr": 0.1, "betas": (0.9, 0.99)}}, src)
    r = convert(src, tmp_path / "a.safetensors", "safetensors")
    assert r.non_tensors == ["epoch", "cfg.lr", "cfg.betas"]
    assert r.non_tensor_sidecar == str(tmp_path / "a.extra.json")
    assert any(f.code == "CK707" for f in r.findings)
    back = tmp_path / "a.pt"
    convert(tmp_path / "a.safetensors", back, "torch")
    out = torch.load(back, weights_only=True)
    assert out["epoch"] == 3 and out["cfg.betas"] == (0.9, 0.99)

    r = convert(src, tmp_path / "b.safetensors", "safetensors", drop_non_tensors=True, dtype="bf16")
    assert r.non_tensor_sidecar is None and not (tmp_path / "b.extra.json").exists()
    assert load_file(tmp_path / "b.safetensors")["w"].dtype == torch.bfloat16


# --- DCP ------------------------------------------------------------------------------------------
def test_torch_to_dcp_loads_with_dcp_into_fresh_model_and_optimizer(tmp_path):
    import torch.distributed.checkpoint as dcp

    model, opt = _tiny_training_state(0)
    src = tmp_path / "consolidated.pth"
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": 7}, src)
    (tmp_path / "params.json").write_text('{"dim": 8}')
    dst = tmp_path / "dcp"
    r = convert(src, dst, "dcp")
    assert r.verified and (dst / ".metadata").is_file() and (dst / "params.json").is_file()

    fresh, fresh_opt = _tiny_training_state(1)  # different weights, optimizer state allocated
    target = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict(), "step": 0}
    dcp.load(target, checkpoint_id=dst, no_dist=True)
    fresh.load_state_dict(target["model"])
    fresh_opt.load_state_dict(target["optim"])
    _same(model.state_dict(), fresh.state_dict())
    _same(opt.state_dict(), fresh_opt.state_dict())
    assert target["step"] == 7


def test_dcp_to_torch_round_trips_bit_identical(tmp_path):
    import torch.distributed.checkpoint as dcp

    model, opt = _tiny_training_state(0)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "train_state": {"step": 3},
             "pair": (1, torch.ones(2)), "empty": {}, "bf": torch.randn(3, 3).bfloat16()}
    # a DCP written by DCP itself -> torch: same values, the nesting DCP rebuilds
    plain = tmp_path / "dcp_plain"
    dcp.save({"model": state["model"], "train_state": state["train_state"]}, checkpoint_id=plain,
             no_dist=True)
    (plain / "params.json").write_text("{}")
    out = tmp_path / "plain.pth"
    r = convert(plain, out, "torch")
    assert r.verified and (tmp_path / "params.json").is_file()
    # (DCP rebuilds plain dicts: the OrderedDict type is DCP's loss, not ours)
    _same({"model": dict(state["model"]), "train_state": state["train_state"]},
          torch.load(out, weights_only=True))

    # torch -> DCP -> torch through ckptdoctor: exact, int keys / tuples / empty dicts included
    src = tmp_path / "full.pt"
    torch.save(state, src)
    convert(src, tmp_path / "dcp_full", "dcp")
    convert(tmp_path / "dcp_full", tmp_path / "full_back.pt", "torch")
    _same(state, torch.load(tmp_path / "full_back.pt", weights_only=True))


def _two_chunk_dcp(root: Path, full: torch.Tensor, offset=lambda row: [row, 0]) -> None:
    """`full` saved as two row chunks, as two FSDP ranks would. Hand-built with DCP's own
    metadata classes: dcp.save in one process writes a tensor as one chunk. `offset` gives a
    chunk's offsets from its first row."""
    import io
    import pickle

    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    root.mkdir()
    storage, chunks = {}, []
    for rank, rows in enumerate(((0, 4), (4, 6))):
        buf = io.BytesIO()
        torch.save(full[rows[0]:rows[1]].clone(), buf)
        (root / f"__{rank}_0.distcp").write_bytes(buf.getvalue())
        off = torch.Size(offset(rows[0]))
        chunks.append(ChunkStorageMetadata(offsets=off, sizes=torch.Size([rows[1] - rows[0], 4])))
        storage[MetadataIndex("w", off, 0)] = _StorageInfo(f"__{rank}_0.distcp", 0,
                                                           len(buf.getvalue()))
    md = Metadata(state_dict_metadata={"w": TensorStorageMetadata(
        TensorProperties.create_from_tensor(full), full.size(), chunks)}, storage_data=storage,
        planner_data={"w": ("w",)})
    (root / ".metadata").write_bytes(pickle.dumps(md))


def test_dcp_chunked_tensor_is_assembled(tmp_path):
    """A tensor saved as two row chunks (as two FSDP ranks would) comes back whole."""
    full = torch.randn(6, 4)
    _two_chunk_dcp(tmp_path / "dcp", full)
    convert(tmp_path / "dcp", tmp_path / "w.safetensors", "safetensors")
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], full)


def test_dcp_chunk_offsets_of_another_rank_are_refused(tmp_path):
    """Chunk offsets with fewer dimensions than the tensor (metadata read from the file, not
    trusted) are one ConvertError, not a traceback or a tensor assembled from a truncated
    index."""
    _two_chunk_dcp(tmp_path / "dcp", torch.randn(6, 4), offset=lambda row: [row])
    with pytest.raises(ConvertError) as err:
        convert(tmp_path / "dcp", tmp_path / "w.safetensors", "safetensors")
    assert "chunk offsets/sizes unreadable" in err.value.finding.message
    assert not (tmp_path / "w.safetensors").exists()


def test_dcp_bytes_item_with_code_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    dcp.save({"w": torch.ones(2), "payload": Evil()}, checkpoint_id=tmp_path / "dcp", no_dist=True)
    for trust in (False, True):
        with pytest.raises(ConvertError) as err:
            convert(tmp_path / "dcp", tmp_path / "out.pt", "torch", trust=trust)
        assert err.value.finding.code == "CK705"
        assert any(f.code == "CK101" for f in err.value.findings)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_code_in_a_source_pickle_never_runs(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "evil.pt")
    dcp_dir = tmp_path / "dcp"
    dcp_dir.mkdir()
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(Evil(), protocol=2))
    for src, to, code in ((tmp_path / "evil.pt", "safetensors", "CK101"),
                          (tmp_path / "evil.pt", "safe", "CK101"),
                          (dcp_dir, "torch", "CK802")):
        with pytest.raises(ConvertError) as err:
            convert(src, tmp_path / "out", to, trust=True)
        assert any(f.code == code for f in err.value.findings), (src, to)
    assert not marker.exists() and not (tmp_path / "out").exists()


# --- DeepSpeed -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_consolidates_to_expected_weights(tmp_path, stage):
    ds = F.make_deepspeed(tmp_path / f"ds{stage}", stage=stage)
    before = set(sys.modules)  # the factory may use the real deepspeed where it is installed
    r = convert(ds, tmp_path / "out", "safetensors")
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] == "deepspeed"}
    assert r.verified and r.source_format == "deepspeed"
    got = load_file(tmp_path / "out" / "model.safetensors")
    expected = F.deepspeed_expected_state_dict(stage=stage)
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v), k
    # --to torch with --dtype, consumed by plain torch.load(weights_only=True)
    convert(ds, tmp_path / "bf16.pt", "torch", dtype="bf16")
    out = torch.load(tmp_path / "bf16.pt", weights_only=True)
    for k, v in expected.items():
        assert torch.equal(out[k], v.to(torch.bfloat16)), k


def test_deepspeed_missing_rank_is_refused(tmp_path):
    ds = F.make_deepspeed(tmp_path / "ds", stage=2)
    next((ds / "global_step5").glob("*zero_pp_rank_1_*optim_states.pt")).unlink()
    with pytest.raises(ConvertError, match="expected 2"):
        convert(ds, tmp_path / "out.safetensors", "safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# --- Lightning and the safe format --------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    return F.make_lightning_ckpt(tmp_path_factory.mktemp("lit"))


def test_lightning_ckpt_to_safetensors_with_strip_prefix(tmp_path, lightning_ckpt):
    r = convert(lightning_ckpt, tmp_path / "model.safetensors", "safetensors",
                strip_prefix="layer.")
    assert r.source_format == "lightning" and r.verified
    ckpt = safe_load(lightning_ckpt)
    got = load_file(tmp_path / "model.safetensors")
    assert sorted(got) == ["bias", "weight"]
    for k in got:
        assert torch.equal(got[k], ckpt["state_dict"]["layer." + k])
    assert "callbacks" in r.skipped  # training state with tensors: reported, not written
    extra = json.loads((tmp_path / "model.extra.json").read_text())["entries"]
    assert extra["global_step"] == ckpt["global_step"]


def _rng_state():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "cpu": torch.get_rng_state(), "np_scalar": np.float64(0.5), "step": np.int64(9)}


def test_training_checkpoints_round_trip_through_safe_format(tmp_path, lightning_ckpt):
    model, opt = _tiny_training_state(0)
    rng = tmp_path / "rng_state.pth"
    torch.save(_rng_state(), rng)
    optim = tmp_path / "optimizer.pt"
    sd = opt.state_dict()
    sd["param_groups"][0]["extra"] = {1: (None, float("nan"), b"\x00x")}
    torch.save(sd, optim)
    ds = F.make_deepspeed(tmp_path / "ds", stage=2)
    ds_optim = next((ds / "global_step5").glob("*rank_0_*optim_states.pt"))
    for i, src in enumerate([rng, optim, lightning_ckpt, ds_optim]):
        safe_dir = tmp_path / f"safe{i}"
        r = convert(src, safe_dir, "safe")
        assert r.verified
        assert sorted(p.name for p in safe_dir.iterdir()) == [
            "manifest.json", "state.json", "tensors.safetensors"]
        assert b"\x80\x02" not in (safe_dir / "state.json").read_bytes()  # no pickle inside
        back = tmp_path / f"back{i}{src.suffix}"
        assert convert(safe_dir, back, "torch").verified
        _same(safe_load(src), safe_load(back))
    # the numpy stream continues identically from the restored state
    restored = safe_load(tmp_path / "back0.pth")
    np.random.set_state(restored["numpy"])
    a = np.random.rand(3)
    np.random.set_state(_rng_state()["numpy"])
    assert np.array_equal(a, np.random.rand(3))


def test_safe_dir_tampering_is_detected(tmp_path):
    src = tmp_path / "x.pt"
    torch.save({"w": torch.ones(4)}, src)
    convert(src, tmp_path / "safe", "safe")
    state = tmp_path / "safe" / "state.json"
    state.write_text(state.read_text().replace('"w"', '"v"'))
    with pytest.raises(ConvertError, match="size differs|sha256"):
        convert(tmp_path / "safe", tmp_path / "back.pt", "torch")


# --- failure handling ----------------------------------------------------------------------------
def test_verification_mismatch_removes_output(tmp_path, monkeypatch):
    from ckptdoctor.convert import st_io

    src = tmp_path / "m.pt"
    torch.save({"w": torch.arange(1000.0)}, src)
    real_write = st_io.write

    def corrupting_write(path, *a, **kw):
        n = real_write(path, *a, **kw)
        with open(path, "r+b") as fh:  # flip the last data byte after the write
            fh.seek(-1, 2)
            b = fh.read(1)
            fh.seek(-1, 2)
            fh.write(bytes([b[0] ^ 1]))
        return n

    monkeypatch.setattr(st_io, "write", corrupting_write)
    for dst in (tmp_path / "out.safetensors", tmp_path / "outdir"):
        with pytest.raises(ConvertError) as err:
            convert(src, dst, "safetensors")
        assert err.value.finding.code == "CK706" and "byte" in err.value.finding.message
        assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temp files left


def test_dcp_verification_catches_a_flipped_byte(tmp_path, monkeypatch):
    from ckptdoctor.convert import torch_to_dcp
    from ckptdoctor.convert.common import Options
    from ckptdoctor.convert.dcp_read import DcpCheckpoint

    src = tmp_path / "m.pt"
    torch.save({"w": torch.arange(1000.0), "step": 1}, src)
    real_verify = torch_to_dcp._verify

    def flip_then_verify(root, leaves, opts, rel):
        shard, offset, nbytes = DcpCheckpoint(root, Options("torch")).raw_range("w")
        with open(shard, "r+b") as fh:
            fh.seek(offset + nbytes - 1)
            b = fh.read(1)
            fh.seek(offset + nbytes - 1)
            fh.write(bytes([b[0] ^ 1]))
        return real_verify(root, leaves, opts, rel)

    monkeypatch.setattr(torch_to_dcp, "_verify", flip_then_verify)
    with pytest.raises(ConvertError) as err:
        convert(src, tmp_path / "dcp", "dcp")
    assert err.value.finding.code == "CK706" and "w: byte 3999" in err.value.finding.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_bad_requests_fail_before_writing(tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"a": torch.ones(10_000), "b": torch.ones(10_000)}, src)
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    cases = [
        dict(dst=tmp_path / "exists.safetensors", to="safetensors"),
        dict(dst=tmp_path / "o.safetensors", to="safetensors", max_shard_size="50KB"),
        dict(dst=tmp_path / "o.safetensors", to="safetensors", strip_prefix="nope."),
        dict(dst=tmp_path / "o.pt", to="torch"),  # torch -> torch is not a conversion
        dict(dst=tmp_path / "o", to="safe", dtype="bf16"),
        dict(dst=tmp_path / "o", to="dcp", strip_prefix="a"),
    ]
    for case in cases:
        dst = case.pop("dst")
        with pytest.raises(ConvertError) as err:
            convert(src, dst, **case)
        assert err.value.finding.code == "CK705", case
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.safetensors", "m.pt"]
    r = convert(src, tmp_path / "shards", "safetensors", max_shard_size="50KB")
    assert len(list((tmp_path / "shards").glob("model-0000*-of-00002.safetensors"))) == 2
    assert "2 tensors" in render_result(r)


# --- memory -------------------------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {root!r})
    import torch, safetensors.torch
    from ckptdoctor.convert import convert

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    base = status("VmRSS:")
    try:  # reset the peak so imports do not count (Linux >= 4.0)
        open("/proc/self/clear_refs", "w").write("5")
        peak = lambda: status("VmHWM:")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sys.argv[1] == "ckptdoctor":
        convert(sys.argv[2], sys.argv[3], "safetensors")
    else:
        sd = torch.load(sys.argv[2], weights_only=True)
        safetensors.torch.save_file(sd, sys.argv[3], metadata={{"format": "pt"}})
    print(json.dumps({{"growth": peak() - base}}))
""")


def test_peak_memory_stays_bounded_by_largest_tensor(tmp_path):
    sizes = [25_000_000, 20_000_000, 15_000_000, 25_000_000, 12_500_000]  # fp32: 390 MB total
    g = torch.Generator().manual_seed(0)
    torch.save({f"w{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)},
               tmp_path / "big.pt")
    largest = max(sizes) * 4
    code = _CHILD.format(root=str(ROOT))
    growth = {}
    for who in ("ckptdoctor", "naive"):
        out = subprocess.run([sys.executable, "-c", code, who, str(tmp_path / "big.pt"),
                              str(tmp_path / f"{who}.safetensors")],
                             capture_output=True, text=True, check=True)
        growth[who] = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    print(f"peak RSS growth: ckptdoctor {growth['ckptdoctor'] / 2**20:.0f} MiB, "
          f"torch.load + save_file {growth['naive'] / 2**20:.0f} MiB, largest tensor "
          f"{largest / 2**20:.0f} MiB")
    assert growth["ckptdoctor"] < largest + (256 << 20)


def test_codec_round_trips_what_checkpoints_hold():
    import argparse
    import collections
    import pathlib
    import signal

    from lightning_fabric.utilities.data import AttributeDict
    from transformers.trainer_pt_utils import AcceleratorConfig

    from ckptdoctor.convert.codec import decode, encode
    from ckptdoctor.standins import standin_for

    od = collections.OrderedDict(a=1)
    od._metadata = {"": {"version": 1}}
    scaler = standin_for("deepspeed.runtime.fp16.loss_scaler.LossScaler")(1.0)
    scaler.__setstate__({"cur_scale": 1.0, "dynamic": False})
    value = {
        "ints": {0: "a", 1: (2, 3)}, "tuple_key": {(1, "x"): None}, "$t": "not a marker",
        "floats": [float("nan"), float("inf"), -0.0, 1e-310], "big": 2**70, "c": 1 + 2j,
        "bytes": b"\x00\xff", "ba": bytearray(b"x"), "set": {3, 1}, "fs": frozenset({"a"}),
        "od": od, "dd": collections.defaultdict(list, {"k": [1]}),
        "ctr": collections.Counter("aab"),
        "ns": argparse.Namespace(lr=0.1, path=pathlib.PosixPath("/tmp/x")),
        "np": np.arange(6, dtype=np.uint32).reshape(2, 3), "npf": np.float64(0.25),
        "npdt": np.dtype("<i8"), "size": torch.Size([2, 3]), "dt": torch.bfloat16,
        "dev": torch.device("cpu"), "enum": signal.SIGTERM, "slice": slice(1, None, 2),
        "attr": AttributeDict(lr=0.1), "cfg": AcceleratorConfig(split_batches=True),
        "standin": scaler,
    }
    doc = json.loads(json.dumps(encode(value), allow_nan=False))
    back = decode(doc)
    _same(value, back)
    assert back["od"]._metadata == od._metadata and type(back["attr"]) is AttributeDict
    assert type(back["cfg"]) is AcceleratorConfig and back["cfg"] == value["cfg"]


def _pairs():
    """(a, b) pairs that differ in exactly one way, each as checkpoints hold them."""
    model, opt = _tiny_training_state(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}

    def changed(fn):
        import copy
        other = copy.deepcopy(sd)
        fn(other)
        return other

    def flip(t):
        t.view(-1)[0] = t.view(-1)[0] + 1

    yield "value", changed(lambda o: flip(o["model"]["0.weight"]))
    yield "optimizer value", changed(lambda o: flip(o["optim"]["state"][0]["exp_avg"]))
    yield (
        "dtype",
        changed(lambda o: o["model"].__setitem__("0.bias", o["model"]["0.bias"].double())),
    )
    yield "shape", changed(lambda o: o["model"].__setitem__("0.bias", o["model"]["0.bias"][:-1]))
    yield "missing key", changed(lambda o: o["model"].pop("2.bias"))
    yield "int", changed(lambda o: o.__setitem__("step", 4))
    yield "lr", changed(lambda o: o["optim"]["param_groups"][0].__setitem__("lr", 2e-3))
    yield (
        "nan vs number",
        changed(lambda o: o["optim"]["param_groups"][0].__setitem__("lr", float("nan"))),
    )
    yield "zeroed", changed(lambda o: o["model"]["0.bias"].zero_())
    yield "tuple vs list", changed(lambda o: o["optim"]["param_groups"][0].__setitem__(
        "betas", list(o["optim"]["param_groups"][0]["betas"])))
    yield "numpy", changed(lambda o: o.__setitem__("step", np.int64(3)))


def test_deep_equal_agrees_with_an_independent_oracle():
    """convert's verification rests on codec.deep_equal: it must say "differs" wherever the
    oracle (torch.equal on bytes, plain Python walking) does. Catches deep_equal always "equal"."""
    model, opt = _tiny_training_state(0)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}
    assert differences(sd, sd) == [] and deep_equal(sd, sd) is None
    for what, other in _pairs():
        assert differences(sd, other), what  # the oracle itself sees the change
        assert deep_equal(sd, other) is not None, what
    neg = {"x": torch.tensor([-0.0])}
    assert differences(neg, {"x": torch.tensor([0.0])})
    assert deep_equal(neg, {"x": torch.tensor([0.0])}) is not None
    nan = {"x": torch.tensor([float("nan")])}
    assert not differences(nan, {"x": torch.tensor([float("nan")])})
    assert deep_equal(nan, {"x": torch.tensor([float("nan")])}) is None


def test_convert_output_checked_by_the_oracle_after_a_real_load(tmp_path):
    """torch -> safetensors -> torch through the CLI; the result is loaded by safetensors and
    torch themselves and compared by the oracle, not by ckptdoctor."""
    from typer.testing import CliRunner

    from ckptdoctor.cli import app

    model, _ = _tiny_training_state(0)
    src = tmp_path / "model.pt"
    torch.save(model.state_dict(), src)
    r = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "m.safetensors"),
                                 "--to", "safetensors"])
    assert r.exit_code == 0, r.output
    want = dict(sorted(model.state_dict().items()))  # safetensors stores names sorted
    assert_same(want, dict(sorted(load_file(tmp_path / "m.safetensors").items())))
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "m.safetensors"),
                                 str(tmp_path / "back.pt"), "--to", "torch"])
    assert r.exit_code == 0, r.output
    assert_same(want, dict(sorted(torch.load(tmp_path / "back.pt", weights_only=True).items())))
