"""Fail closed: every file has a scan state (complete / inconclusive / failed), anything but
complete fails validate for every consumer and is never picked by `latest`; scans are bounded
per FILE; what the consumer reads is what is scanned (polyglots, DCP paths as DCP resolves
them); DeepSpeed is judged by the scan; the CVE-2026-24747 patterns are dangerous.

Hand-built inputs are marked as such where they are built (no library writes them)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.formats import detect_file
from ckptdoctor.model import ScanState

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
runner = CliRunner()

try:
    from tests.fixtures import factory as fx
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fixtures import factory as fx


class Payload:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class UserThing:
    """A user class pickled into a checkpoint (its global is of unknown safety)."""

    def __init__(self):
        self.n = 1


def _victim(code: str, *args: str, cwd: Path) -> None:
    """Run a victim load in a throwaway subprocess (errors after the payload are expected)."""
    subprocess.run([sys.executable, "-c", "import sys\ntry:\n" + "".join(
        f"    {line}\n" for line in code.splitlines()) + "except Exception:\n    pass", *args],
        cwd=cwd, env=ENV, capture_output=True, timeout=300)


def _validate(path: Path, *args: str) -> tuple[int, dict]:
    r = runner.invoke(app, ["validate", *args, "--format", "json", str(path)])
    return r.exit_code, json.loads(r.stdout)


# --- bounded work -----------------------------------------------------------------------------
_MEASURE = """
import json, resource, sys
from typer.testing import CliRunner
from ckptdoctor.cli import app
r = CliRunner().invoke(app, ["inspect", "--json", sys.argv[1]])
ru = resource.getrusage(resource.RUSAGE_SELF)
# peak RSS of THIS program: VmHWM belongs to the address space exec created (ru_maxrss would
# include the forking pytest process's own pages on Linux)
try:
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = ru.ru_maxrss
print(json.dumps({"cpu": ru.ru_utime + ru.ru_stime, "rss_mb": hwm / 1024,
                  "exit": r.exit_code, "doc": json.loads(r.stdout)}))
"""


def _bomb_zip(path: Path, members: int) -> None:
    """Hand-built (torch never compresses): deflated pickles of 50M EMPTY_LIST opcodes."""
    bomb = b"\x80\x02" + b"]" * 50_000_000 + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", bomb)
        for i in range(members - 1):
            zf.writestr(f"archive/m{i}.pkl", bomb)


def _measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("members", [1, 20])
def test_opcode_bomb_is_bounded_per_file(tmp_path, members):
    path = tmp_path / "bomb.pt"
    _bomb_zip(path, members)
    if members == 1:
        assert path.stat().st_size < 60_000  # the 48 KB bomb of the issue
    m = _measure(path)
    assert m["cpu"] < 2.0, m["cpu"]  # CPU seconds of the whole process (imports included)
    assert m["rss_mb"] < 200, m["rss_mb"]
    f = m["doc"]["files"][0]
    assert f["scan_state"] == "inconclusive"
    assert "CK106" in {x["code"] for x in m["doc"]["findings"]}


def test_caps_count_per_file_not_per_pickle():
    """Two pickles of 600 opcodes each: under a 1000-opcode cap per pickle, over it per file."""
    from ckptdoctor.pickles.scan import ScanLimits, file_budget, scan_bytes

    one = b"\x80\x02" + b"]0" * 299 + b"N."  # 600 opcodes
    limits = ScanLimits(max_opcodes=1000)
    assert scan_bytes(one, "", limits).state is ScanState.COMPLETE
    with file_budget(limits):
        first, second = scan_bytes(one, "", limits), scan_bytes(one, "", limits)
    assert first.state is ScanState.COMPLETE
    assert second.state is ScanState.INCONCLUSIVE
    assert any(f.code == "CK106" for f in second.findings)


def test_stack_cap(tmp_path):
    from ckptdoctor.pickles.scan import ScanLimits, scan_bytes

    data = b"\x80\x02" + b"]" * 1000 + b"."
    scan = scan_bytes(data, "", ScanLimits(max_stack=500))
    assert scan.state is ScanState.INCONCLUSIVE and scan.opcodes < 600
    assert scan_bytes(data, "", ScanLimits(max_stack=5000)).state is ScanState.COMPLETE


# --- npy headers, detector errors, sibling findings --------------------------------------------
def _npy_with_shape(path: Path, shape_text: str) -> None:
    """Hand-built: numpy writes valid headers only; the shape text is replaced."""
    np.save(path, np.arange(6, dtype=np.int64).reshape(2, 3))
    raw = path.read_bytes()
    n = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + n].decode("latin-1").replace("(2, 3)", shape_text)
    path.write_bytes(raw[:8] + len(header).to_bytes(2, "little") + header.encode("latin-1")
                     + raw[10 + n:])


@pytest.mark.parametrize("shape", ["(1e999,)", "(None,)", "(-1,)", "(2.5,)", "'x'"])
def test_bad_npy_header_is_a_finding_and_siblings_survive(tmp_path, shape):
    d = tmp_path / "run"
    d.mkdir()
    _npy_with_shape(d / "state.npy", shape)
    with pytest.raises(ValueError):  # numpy itself refuses the header
        np.load(d / "state.npy")
    torch.save({"x": Payload("true")}, d / "bad.pt")
    r = runner.invoke(app, ["inspect", "--json", str(d)])
    doc = json.loads(r.stdout)  # one JSON document
    codes = {(f["path"], f["code"]) for f in doc["findings"]}
    assert ("state.npy", "CK820") in codes
    assert ("bad.pt", "CK101") in codes


def test_valid_npy_is_complete(tmp_path):
    np.save(tmp_path / "ok.npy", np.zeros((2, 3)))
    info = detect_file(tmp_path / "ok.npy", "ok.npy")
    assert info.scan_state is ScanState.COMPLETE and not info.findings
    assert info.tensors[0].shape == (2, 3)


def test_detector_exception_is_a_finding_for_that_file_only(tmp_path, monkeypatch):
    """Fault injection into OUR reader (not into torch or the file system): an internal
    error in one detector becomes CK121 / failed for that file; the run goes on."""
    from ckptdoctor import formats
    from ckptdoctor.formats.numpy_file import Numpy

    def broken(self, probe, rel):
        raise RuntimeError("detector bug")

    monkeypatch.setattr(Numpy, "read", broken)
    np.save(tmp_path / "a.npy", np.zeros(2))
    torch.save({"x": Payload("true")}, tmp_path / "bad.pt")
    info = formats.detect_file(tmp_path / "a.npy", "a.npy")
    assert info.scan_state is ScanState.FAILED and not info.loadable
    assert [f.code for f in info.findings] == ["CK121"]
    code, doc = _validate(tmp_path)
    assert code == 1
    codes = {(f["path"], f["code"]) for f in doc["findings"]}
    assert {("a.npy", "CK121"), ("bad.pt", "CK101")} <= codes


# --- polyglot ---------------------------------------------------------------------------------
_OK = set(range(0x20, 0x7F)) - {0x22, 0x5C}  # JSON-string-safe SHORT_BINSTRING lengths


def polyglot_safetensors(cmd: str) -> bytes:
    """Hand-built: a valid safetensors file that is also a pickle. The 8-byte header length
    0x855 reads as SHORT_BINSTRING of 8 bytes ('U', 8); the JSON key is a chain of further
    SHORT_BINSTRINGs that swallow the rest of the header; the pickle then continues in the
    tensor data: GLOBAL posix.system, REDUCE."""
    code = b"cposix\nsystem\n(S'" + cmd.encode() + b"'\ntR."
    rest = json.dumps({"t": {"dtype": "U8", "shape": [len(code)],
                             "data_offsets": [0, len(code)]}}, separators=(",", ":"))[1:]
    n = 0x55 + 8 * 256
    tail = '":' + json.dumps({"dtype": "U8", "shape": [len(code)],
                              "data_offsets": [0, len(code)]}, separators=(",", ":")) + "}"
    del rest
    key_len = n - 2 - len(tail)
    key = bytearray(b"x" * key_len)
    pos = 2  # header offset of the next opcode: '{"' went into the first string
    while True:
        rem = n - pos - 2
        if rem <= 126:
            assert rem in _OK and pos + 1 < 2 + key_len, rem
            key[pos - 2:pos] = b"U" + bytes([rem])
            break
        hop = 126 if rem - 128 >= 70 else rem - 2 - 70
        while hop not in _OK or (rem - hop - 2) in (0x22, 0x5C):
            hop -= 1
        key[pos - 2:pos] = b"U" + bytes([hop])
        pos += 2 + hop
    header = b'{"' + bytes(key) + tail.encode()
    assert len(header) == n
    return n.to_bytes(8, "little") + header + code


def test_polyglot_safetensors_is_inconclusive_and_dangerous(tmp_path):
    from safetensors import safe_open

    canary = tmp_path / "CANARY"
    path = tmp_path / "ckpt" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(polyglot_safetensors(f"touch {canary}"))
    with safe_open(str(path), "pt") as f:  # a valid safetensors file ...
        assert len(list(f.keys())) == 1
    # torch >= 2.13 hands a *path* ending in .safetensors to safetensors; a file object (or
    # any other name, e.g. pytorch_model.bin) goes to the unpickler
    _victim("import torch; torch.load(open(sys.argv[1], 'rb'), weights_only=False)",
            str(path), cwd=tmp_path)
    assert canary.exists()  # ... that torch.load(weights_only=False) runs
    canary.unlink()
    info = detect_file(path, path.name)
    assert info.format == "safetensors"
    assert info.scan_state is ScanState.INCONCLUSIVE
    assert "posix.system" in {g.name for g in info.dangerous}
    assert {"CK122", "CK101"} <= {f.code for f in info.findings}
    code, doc = _validate(path.parent)
    assert code == 1 and "CK122" in {f["code"] for f in doc["findings"]}
    assert not canary.exists()


def test_real_safetensors_numpy_json_are_not_polyglots(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(3, 4), "b": torch.zeros(7)}, tmp_path / "m.safetensors",
              metadata={"format": "pt"})
    np.save(tmp_path / "a.npy", np.arange(5))
    (tmp_path / "c.json").write_text(json.dumps({"a": [1, 2]}))
    for name in ("m.safetensors", "a.npy", "c.json"):
        info = detect_file(tmp_path / name, name)
        assert info.scan_state is ScanState.COMPLETE, (name, info.findings)


# --- DCP --------------------------------------------------------------------------------------
def _dcp_save_with_prefix(path: Path, prefix: str, item: object) -> None:
    """Written by the real dcp.save; only the shard file prefix DCP records as relative_path
    is chosen (a FileSystemWriter subclass), e.g. './__0_'."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, _StoragePrefix

    class PrefixWriter(FileSystemWriter):
        def prepare_global_plan(self, plans):
            return [dataclasses.replace(p, storage_data=_StoragePrefix(prefix)) for p in plans]

    dcp.save({"w": torch.arange(4.0), "extra": item},  # non-tensors: torch.save'd bytes items
             storage_writer=PrefixWriter(str(path)))


def test_dcp_item_behind_dot_slash_path_is_scanned(tmp_path):
    canary = tmp_path / "CANARY"
    ckpt = tmp_path / "ckpt"
    with pytest.warns(UserWarning):
        _dcp_save_with_prefix(ckpt, "./__0_", Payload(f"touch {canary}"))
    assert b"./__0_0.distcp" in (ckpt / ".metadata").read_bytes()
    _victim("import torch, torch.distributed.checkpoint as dcp\n"
            "dcp.load({'w': torch.zeros(4), 'extra': 0}, checkpoint_id=sys.argv[1])",
            str(ckpt), cwd=tmp_path)
    assert canary.exists()  # dcp.load opens ./__0_0.distcp and runs the item
    canary.unlink()
    info = detect_file(ckpt / "__0_0.distcp", "__0_0.distcp")
    assert "posix.system" in {g.name for g in info.dangerous}
    code, doc = _validate(ckpt)
    assert code == 1 and "CK101" in {f["code"] for f in doc["findings"]}
    assert not canary.exists()


def test_dcp_path_escaping_the_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "run" / "ckpt"
    with pytest.warns(UserWarning):
        _dcp_save_with_prefix(ckpt, "../__0_", Payload("true"))
    assert (tmp_path / "run" / "__0_0.distcp").is_file()  # DCP wrote outside the checkpoint
    info = detect_file(ckpt / ".metadata", ".metadata")
    assert info.scan_state is ScanState.INCONCLUSIVE
    assert "CK821" in {f.code for f in info.findings}
    assert _validate(ckpt)[0] == 1


def test_dcp_plain_save_is_complete(tmp_path):
    ckpt = fx.make_dcp(tmp_path / "dcp")
    code, doc = _validate(ckpt)
    assert code == 0, doc["findings"]
    assert {f["scan_state"] for f in doc["files"]} == {"complete"}


# --- CVE-2026-24747 patterns ------------------------------------------------------------------
def _rewrite_record(src: Path, dst: Path, name: str, data: bytes) -> None:
    """Hand-built: the torch.save archive re-zipped with one record replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, data if i.filename == name else zin.read(i))


def test_setitem_into_a_tensor_is_dangerous(tmp_path):
    torch.save(torch.arange(4.0), tmp_path / "t.pt")
    pkl = zipfile.ZipFile(tmp_path / "t.pt").read("t/data.pkl")
    assert pkl.endswith(b".")
    evil = pkl[:-1] + b"K\x00K\x07s."  # SETITEM 0 -> 7 on the rebuilt tensor
    _rewrite_record(tmp_path / "t.pt", tmp_path / "evil.pt", "t/data.pkl", evil)
    info = detect_file(tmp_path / "evil.pt", "evil.pt")
    assert info.dangerous and "CK123" in {f.code for f in info.findings}
    ok = detect_file(tmp_path / "t.pt", "t.pt")
    assert not ok.dangerous and ok.scan_state is ScanState.COMPLETE


def test_setitem_into_a_list_is_dangerous():
    from ckptdoctor.pickles.scan import scan_bytes

    scan = scan_bytes(b"\x80\x02]K\x00K\x01s.", "x")
    assert scan.dangerous and any(f.code == "CK123" for f in scan.findings)


def test_real_dicts_are_not_cve_patterns(tmp_path):
    from collections import Counter, OrderedDict, defaultdict

    dd = defaultdict(list)
    dd["a"].append(1)
    torch.save({"d": {"a": 1}, "o": OrderedDict(b=2), "c": Counter("aab"), "dd": dd,
                "opt": torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1).state_dict()},
               tmp_path / "d.pt")
    info = detect_file(tmp_path / "d.pt", "d.pt")
    assert not info.dangerous and "CK123" not in {f.code for f in info.findings}


def test_storage_size_disagreeing_with_numel_is_dangerous(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "t.pt")
    raw = zipfile.ZipFile(tmp_path / "t.pt").read("t/data/0")
    _rewrite_record(tmp_path / "t.pt", tmp_path / "big.pt", "t/data/0", raw + b"\0" * 64)
    info = detect_file(tmp_path / "big.pt", "big.pt")
    assert info.dangerous and "CK124" in {f.code for f in info.findings}
    assert not detect_file(tmp_path / "t.pt", "t.pt").dangerous


# --- the gate: fail closed for every consumer, `latest` -----------------------------------------
def test_inconclusive_fails_even_with_every_code_ignored(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    _bomb_small = b"\x80\x02" + b"]" * 300_000 + b"."  # over the 250k stack cap
    torch.save({"w": torch.ones(2)}, d / "model.pt")
    _rewrite_record(d / "model.pt", d / "model2.pt", "model/data.pkl", _bomb_small)
    (d / "model.pt").unlink()
    for consumer in ("framework", "torch"):
        code, doc = _validate(d, "--consumer", consumer, "--ignore", "CK1", "--ignore", "CK2",
                              "--ignore", "CK6")
        assert code == 1, doc["findings"]
        assert doc["verdict"].startswith("NOT RESUMABLE")


def test_deepspeed_is_judged_by_the_scan(tmp_path):
    ckpt = fx.make_deepspeed(tmp_path / "ds", stage=2)
    assert _validate(ckpt)[0] == 0  # DeepSpeed's own globals are reviewed data
    model = next(ckpt.glob("global_step*/mp_rank_00_model_states.pt"))
    with fx.deepspeed_stub_modules():
        state = torch.load(model, weights_only=False)  # our own fixture file
    state["client_thing"] = UserThing()
    torch.save(state, model)
    code, doc = _validate(ckpt)
    assert code == 1
    hits = [f for f in doc["findings"] if f["code"] == "CK601" and f["path"].endswith(
        "mp_rank_00_model_states.pt")]
    assert hits and "UserThing" in hits[0]["message"]
    name = f"{UserThing.__module__}.UserThing"
    assert _validate(ckpt, "--allow", name)[0] == 0  # named by the user: passes


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    return fx.make_hf_trainer_run(tmp_path_factory.mktemp("run") / "out", steps=4, save_steps=2)


def test_latest_skips_an_inconclusive_checkpoint(trainer_run, tmp_path):
    """checkpoint-4's optimizer.pt gets a second central directory whose records are the
    SAME benign ones at other offsets: nothing dangerous, only inconclusive (CK220)."""
    import shutil

    from ckptdoctor.latest import newest_valid

    try:
        from tests.test_reader_differential import two_central_directories
    except ImportError:
        from test_reader_differential import two_central_directories
    run = tmp_path / "out"
    shutil.copytree(trainer_run, run)
    assert newest_valid(run).best == run / "checkpoint-4"
    opt = run / "checkpoint-4" / "optimizer.pt"
    raw = opt.read_bytes()
    opt.write_bytes(two_central_directories(raw, raw))
    info = detect_file(opt, "optimizer.pt")
    assert info.scan_state is ScanState.INCONCLUSIVE and not info.dangerous
    result = newest_valid(run)
    assert result.best == run / "checkpoint-2", result.skipped
    assert any("CK220" in s.reason for s in result.skipped)
