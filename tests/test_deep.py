"""`validate --deep` streams every byte once: CRC32 of every zip record, NaN/Inf from raw bits
for every floating dtype, optimizer shapes from metadata, in bounded memory. Every file here is
written by torch / safetensors / transformers / accelerate; expected counts come from torch's
own `isfinite` on the tensors that were saved, never from ckptdoctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ckptdoctor.cli import app
from tests.fixtures import factory as fx

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def deep_json(path, *extra):
    r = cli("validate", "--deep", "--format", "json", *extra, path)
    return r.exit_code, json.loads(r.stdout)["findings"]


def nonfinite(findings):
    return {f["detail"]["tensor"]: (f["detail"]["count"], f["severity"])
            for f in findings if f["code"] == "CK501"}


def torch_count(t: torch.Tensor) -> int:
    """The independent oracle: torch's own isfinite (fp8 has no kernels: widen first)."""
    if t.dtype.is_complex:
        return int((~torch.isfinite(t)).sum())
    return int((~torch.isfinite(t.to(torch.float32))).sum())


def poisoned(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    base = torch.linspace(-2, 2, 300, dtype=torch.float32)
    nan = base.clone()
    nan[[3, 77, 299]] = float("nan")
    inf = base.clone()
    inf[[0, 150]] = float("inf")
    inf[151] = float("-inf")
    if dtype.is_complex:
        return {"nan": nan.to(dtype), "inf": (inf * 1j).to(dtype), "clean": base.to(dtype)}
    return {"nan": nan.to(dtype), "inf": inf.to(dtype), "clean": base.to(dtype)}


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.complex64]
SAFETENSORS_DTYPES = {torch.float32, torch.float64, torch.float16, torch.bfloat16,
                      torch.float8_e4m3fn, torch.float8_e5m2}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_in_every_dtype_torch_zip(tmp_path, dtype):
    tensors = poisoned(dtype)
    want = {k: torch_count(v) for k, v in tensors.items() if torch_count(v)}
    assert want  # e4m3fn has no Inf: +-inf become NaN; the fnuz types saturate to their NaN
    p = tmp_path / "w.pt"
    torch.save(tensors, p)
    rc, found = deep_json(p)
    assert rc == 1
    assert nonfinite(found) == {k: (n, "error") for k, n in want.items()}


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES, key=str), ids=str)
def test_nan_and_inf_in_every_dtype_safetensors(tmp_path, dtype):
    tensors = poisoned(dtype)
    want = {k: torch_count(v) for k, v in tensors.items() if torch_count(v)}
    p = tmp_path / "m.safetensors"
    save_file(tensors, p, metadata={"format": "pt"})
    rc, found = deep_json(p)
    assert rc == 1 and nonfinite(found) == {k: (n, "error") for k, n in want.items()}


def test_allow_nonfinite_turns_the_error_into_a_warning(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor([1.0, float("inf")])}, p, metadata={"format": "pt"})
    assert deep_json(p)[0] == 1
    rc, found = deep_json(p, "--allow-nonfinite")
    assert rc == 0 and nonfinite(found) == {"w": (1, "warning")}


def test_views_of_one_storage_are_each_named(tmp_path):
    """torch.save keeps views sharing one storage; a NaN is reported for every tensor that
    sees it and for no tensor that does not."""
    x = torch.arange(100, dtype=torch.float32)
    x[5] = float("nan")
    x[60] = float("inf")
    p = tmp_path / "v.pt"
    state = {"all": x, "head": x[:50], "tail": x[50:], "mid": x[40:55]}
    torch.save(state, p)
    _, found = deep_json(p)
    assert nonfinite(found) == {k: (torch_count(v), "error") for k, v in state.items()
                                if torch_count(v)}
    assert nonfinite(found)["all"][0] == 2 and "mid" not in nonfinite(found)


def test_flipped_byte_in_bf16_optimizer_state_is_a_crc_mismatch(tmp_path):
    p = tmp_path / "optimizer.pt"
    m = torch.nn.Linear(64, 64).to(torch.bfloat16)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 64, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), p)
    assert deep_json(p)[0] == 0
    data = bytearray(p.read_bytes())
    needle = opt.state_dict()["state"][0]["exp_avg"].view(torch.uint8).numpy().tobytes()[100:116]
    data[data.find(needle) + 3] ^= 0x10
    p.write_bytes(bytes(data))
    rc, found = deep_json(p)
    assert rc == 1 and [f["code"] for f in found if f["severity"] == "error"] == ["CK204"]


def test_crc_of_zero_is_not_recorded_not_corrupt(tmp_path):
    p = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.arange(1000, dtype=torch.float32)}, p)
    finally:
        torch.serialization.set_crc32_options(True)
    import zipfile

    with zipfile.ZipFile(p) as zf:  # independent: torch really wrote 0 for the data record
        assert any(i.CRC == 0 and i.file_size for i in zf.infolist())
    rc, found = deep_json(p)
    assert rc == 0
    assert [f["code"] for f in found] == ["CK510"]
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.arange(1000.0))


# --- optimizer shapes from metadata (issue 10 item 1) -----------------------------------------
@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    gpt2 = fx.make_hf_trainer_run(base / "gpt2", steps=2, save_steps=2)
    llama = fx.make_hf_trainer_run(base / "llama", steps=2, save_steps=2, model="llama")
    return gpt2 / "checkpoint-2", llama / "checkpoint-2"


def codes(findings):
    return [f["code"] for f in findings]


def test_healthy_hf_trainer_checkpoint_has_no_optimizer_shape_finding(hf_runs):
    gpt2, _ = hf_runs
    # independent: the real Trainer split parameters into decay / no-decay groups, so the
    # optimizer's indices are not in the weights' order (what made the old check misfire)
    groups = torch.load(gpt2 / "optimizer.pt", weights_only=True)["param_groups"]
    assert len(groups) == 2 and all(g["params"] for g in groups)
    rc, found = deep_json(gpt2)
    assert "CK502" not in codes(found), found


def test_optimizer_of_another_model_is_found(hf_runs, tmp_path):
    gpt2, llama = hf_runs
    mixed = tmp_path / "checkpoint-2"
    shutil.copytree(gpt2, mixed)
    shutil.copy2(llama / "optimizer.pt", mixed / "optimizer.pt")
    rc, found = deep_json(mixed)
    assert rc == 1 and "CK502" in codes(found)


def test_healthy_accelerate_state_has_no_optimizer_shape_finding(tmp_path):
    d = fx.make_accelerate_state(tmp_path / "acc")
    rc, found = deep_json(d)
    assert "CK502" not in codes(found), found
    # a real AdamW state of a different Linear in its place is caught
    other = torch.nn.Linear(8, 5)
    opt = torch.optim.AdamW(other.parameters())
    other(torch.randn(2, 8)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), d / "optimizer.bin")
    rc, found = deep_json(d)
    assert "CK502" in codes(found)


# --- memory -----------------------------------------------------------------------------------
# Peak RSS of the child's own address space. getrusage(RUSAGE_SELF).ru_maxrss is not used:
# Linux carries the parent's peak across fork+exec into it (the pytest parent holds torch and
# the 320 MB tensor), so it would measure the parent. VmHWM is reset by exec.
RSS_PROBE = """
import sys
from ckptdoctor.validate import ValidateOptions, validate
report, found = validate(sys.argv[1], ValidateOptions(deep=True, jobs=2))
assert "torch" not in sys.modules, "--deep imported torch"
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(hwm, len(found))
"""


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_deep_peak_rss_is_bounded(tmp_path, fmt):
    """A 320 MB file is checked in well under its own size of memory (ru_maxrss of the child,
    not a wall clock); torch is never imported."""
    big = torch.zeros(80 << 20, dtype=torch.float32)
    big[-1] = float("nan")
    p = tmp_path / f"big.{fmt}"
    if fmt == "pt":
        torch.save({"big": big}, p)
    else:
        save_file({"big": big}, p, metadata={"format": "pt"})
    del big
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(p)], capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    maxrss_mb = int(out[0]) / 1024  # kilobytes
    assert int(out[1]) >= 1  # it did read to the NaN at the very end
    assert maxrss_mb < 200, maxrss_mb


def test_lightning_callback_inf_is_bookkeeping_not_an_error(tmp_path):
    """A real Lightning checkpoint keeps ModelCheckpoint's kth_value = +inf on purpose: that is
    a warning; the gate still passes."""
    ckpt = fx.make_lightning_ckpt(tmp_path / "lit", hparams_namespace=False)
    raw = torch.load(ckpt, weights_only=True)  # independent: the inf really is in the file
    assert any(torch.isinf(v.get("kth_value", torch.tensor(0.0))).any()
               for v in raw["callbacks"].values())
    rc, found = deep_json(ckpt)
    bad = nonfinite(found)
    assert rc == 0 and bad and all(sev == "warning" and name.startswith("callbacks.")
                                   for name, (_, sev) in bad.items())


def test_jobs_give_the_same_findings_as_one_thread(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(6):
        t = torch.randn(64, 64)
        t[i, i] = float("nan")
        save_file(
            {f"w{i}": t}, d / f"model-{i:05d}-of-00006.safetensors", metadata={"format": "pt"}
        )
        torch.save({f"x{i}": torch.arange(4096, dtype=torch.float32)}, d / f"extra_{i}.pt")
    data = bytearray((d / "extra_3.pt").read_bytes())
    data[data.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[800:816])] ^= 1
    (d / "extra_3.pt").write_bytes(bytes(data))
    one = deep_json(d, "--jobs", "1")
    four = deep_json(d, "--jobs", "4")
    assert one == four
    assert sorted(nonfinite(one[1])) == [f"w{i}" for i in range(6)]
    assert [f["path"] for f in one[1] if f["code"] == "CK204"] == ["extra_3.pt"]


# --- manifests users can sign -----------------------------------------------------------------
def test_written_manifest_is_the_model_signing_manifest_of_the_directory(tmp_path):
    """model_signing's own parser reads the statement back into the same manifest that
    model_signing computes from the directory: signing/verifying it works on the same bytes."""
    pytest.importorskip("OpenSSL")
    from model_signing import hashing
    from model_signing._signing import signing

    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    save_file({"w": torch.ones(3)}, d / "model.safetensors", metadata={"format": "pt"})
    torch.save({"a": torch.zeros(2)}, d / "sub" / "x.pt")
    assert cli("validate", "--deep", "--write-manifest", d).exit_code == 0
    doc = json.loads((d / ".ckptdoctor-manifest.json").read_text())
    theirs = hashing.Config().set_ignored_paths(paths=[".ckptdoctor-manifest.json"]).hash(d)
    assert signing.dsse_payload_to_manifest(doc) == theirs
    assert cli("validate", d).exit_code == 0
    (d / "sub" / "x.pt").write_bytes((d / "sub" / "x.pt").read_bytes()[:-1] + b"!")
    r = cli("validate", "--format", "json", d)
    assert r.exit_code == 1 and [f["path"] for f in json.loads(r.stdout)["findings"]
                                 if f["code"] == "CK503"] == ["sub/x.pt"]


def test_old_manifest_format_is_still_read(tmp_path):
    import hashlib

    d = tmp_path / "ckpt"
    d.mkdir()
    save_file({"w": torch.ones(3)}, d / "model.safetensors", metadata={"format": "pt"})
    data = (d / "model.safetensors").read_bytes()
    old = {"version": 1, "algorithm": "sha256", "files": {"model.safetensors": {
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}
    (d / ".ckptdoctor-manifest.json").write_text(json.dumps(old))
    assert cli("validate", d).exit_code == 0
    old["files"]["model.safetensors"]["sha256"] = "0" * 64
    (d / ".ckptdoctor-manifest.json").write_text(json.dumps(old))
    r = cli("validate", "--format", "json", d)
    assert r.exit_code == 1 and "CK503" in [f["code"] for f in json.loads(r.stdout)["findings"]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.float8_e4m3fnuz,
                                   torch.float8_e5m2fnuz], ids=str)
def test_bit_tests_agree_with_torch_on_every_bit_pattern(dtype):
    """Every 8/16-bit pattern: the raw-bit mask and the cheap screen equal torch.isfinite."""
    from ckptdoctor.stream import maybe_nonfinite, nonfinite_mask

    bits = 8 * torch.tensor([], dtype=dtype).element_size()
    raw = torch.arange(2 ** bits, dtype=torch.int32).to(torch.uint8 if bits == 8 else torch.int16)
    if bits == 16:
        raw = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16)
    values = raw.view(dtype)
    want = ~torch.isfinite(values.to(torch.float32))
    data = raw.numpy().tobytes()
    name = str(dtype).removeprefix("torch.")
    assert torch.equal(torch.from_numpy(nonfinite_mask(data, name).copy()), want)
    # the screen flags a chunk with one bad value
    for i in torch.nonzero(want).flatten()[:64].tolist():
        clean = torch.zeros(1024, dtype=raw.dtype)
        clean[i % 1024] = raw[i]
        assert maybe_nonfinite(clean.numpy().tobytes(), name)
    assert not maybe_nonfinite(raw[~want].numpy().tobytes(), name)


def test_dcp_shard_items_are_checked(tmp_path):
    """DCP writes each tensor item as a torch.save zip inside the .distcp shard: its CRC32s
    and values are checked, the tensor named by its fully qualified name."""
    w = torch.randn(16, 8)
    w[3, 3] = float("nan")
    state = {"model": {"w": w, "b": torch.zeros(8)}, "step": 3}
    out = tmp_path / "dcp"
    fx._dcp_save(state, out)
    rc, found = deep_json(out)
    assert rc == 1 and nonfinite(found) == {"model.w": (torch_count(w), "error")}
    shard = out / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[data.find(torch.zeros(8).numpy().tobytes()) + 5] ^= 0x20  # inside model.b's record
    shard.write_bytes(bytes(data))
    rc, found = deep_json(out)
    assert [f["message"].split()[1] for f in found if f["code"] == "CK204"] == \
        ["model.b!archive/data/0"]


@pytest.mark.parametrize("overlap", [False, True])
def test_double_buffered_checks_count_every_chunk(tmp_path, overlap):
    """Small chunks so each storage spans many reads: with `overlap` the value checks of one
    buffer run in a helper while the other buffer is read and CRC'd; no chunk may be missed,
    checked twice or checked after its buffer was reused."""
    from ckptdoctor.deep import check_file
    from ckptdoctor.inspect import inspect_path

    g = torch.Generator().manual_seed(1)
    sd = {}
    for i, dtype in enumerate((torch.bfloat16, torch.float32, torch.float16, torch.bfloat16)):
        t = torch.randn(50_000 + 17 * i, generator=g).to(dtype)
        idx = torch.randint(0, t.numel(), (40 + i,), generator=g)
        t[idx] = float("nan")
        t[idx[:5] + 1] = float("inf")
        sd[f"t{i}"] = t
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    data = bytearray(path.read_bytes())
    tail = sd["t1"][-64:].numpy().tobytes()  # corrupt t1's last bytes: a CRC mismatch
    at = data.find(tail)
    data[at + 4] ^= 1  # the lowest mantissa bit: finite stays finite, NaN/Inf stay non-finite
    path.write_bytes(bytes(data))
    expect = {k: torch_count(v) for k, v in sd.items()}
    info = inspect_path(path).files[0]
    out = check_file(path, info, deep=True, want_hash=True, overlap=overlap, chunk=8 << 10)
    counts = {f.detail["tensor"]: f.detail["count"] for f in out.findings if f.code == "CK501"}
    assert counts == expect
    assert [f.code for f in out.findings].count("CK204") == 1
    import hashlib
    assert out.sha256 == hashlib.sha256(bytes(data)).hexdigest()


LEGACY_NO_TORCH = """
import sys
from ckptdoctor.validate import ValidateOptions, validate
report, found = validate(sys.argv[1], ValidateOptions(deep=True, jobs=1))
print(sorted((f.detail["tensor"], f.detail["count"]) for f in found if f.code == "CK501"))
print("torch" in sys.modules)
"""


def test_legacy_torch_file_is_streamed_without_torch(tmp_path):
    """Pre-1.6 (non-zip) files: NaN/Inf from the raw storages, found by walking the legacy
    layout; torch is never imported. Counts come from torch's isfinite on what was saved."""
    sd = {}
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for k, v in poisoned(dtype).items():
            sd[f"{k}_{str(dtype)[6:]}"] = v
    base = poisoned(torch.float32)["nan"]
    sd["view_tail"] = base[100:]  # a view into another tensor's storage: its own range only
    sd["int"] = torch.arange(10)
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert not zipfile_like(path)
    expect = sorted((k, torch_count(v)) for k, v in sd.items()
                    if v.is_floating_point() and torch_count(v))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", LEGACY_NO_TORCH, str(path)], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [repr(expect), "False"]


def zipfile_like(path: Path) -> bool:
    import zipfile
    return zipfile.is_zipfile(path)
