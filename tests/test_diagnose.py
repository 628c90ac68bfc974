"""diagnose.py: real load failures -> findings with stable codes, causes, producers, fixes."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckptdoctor.diagnose import diagnose, key_line, producer, safe_globals_snippet
from ckptdoctor.loaders import LoadError, _static_scan, load_with_chain


def _fail(path: Path, **kwargs) -> BaseException:
    """The exception a plain torch.load(weights_only=True) raises on `path`."""
    try:
        torch.load(path, weights_only=True, **kwargs)
    except Exception as exc:
        return exc
    raise AssertionError(f"{path} loaded")


def _diagnose(path: Path, layout: str | None = None):
    return diagnose(path.name, _fail(path), _static_scan(path, path.name), layout)


def _run_snippet(snippet: str, cwd: Path):
    scope: dict = {}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        exec(snippet, scope)  # the snippet is ours, the file is ours
    finally:
        os.chdir(old)
    return scope["ckpt"]


def _numpy1_spelled(src: Path, dst: Path) -> None:
    """Stand-in for a real numpy-1 file: numpy 2's GLOBAL lines respelled numpy 1's way."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            zout.writestr(info.filename, data)


def test_snippet_matches_the_documented_form():
    snippet = safe_globals_snippet(["numpy.core.multiarray._reconstruct", "numpy.ndarray",
                                    "numpy.dtype", "numpy.dtypes.UInt32DType"])
    assert snippet == (
        "import numpy, torch\n"
        "with torch.serialization.safe_globals([(numpy._core.multiarray._reconstruct, "
        "\"numpy.core.multiarray._reconstruct\"), numpy.ndarray, numpy.dtype, "
        "numpy.dtypes.UInt32DType]):\n"
        "    ckpt = torch.load(path, weights_only=True)")


def test_snippet_imports_each_module_and_skips_what_torch_allows_or_refuses():
    snippet = safe_globals_snippet(["argparse.Namespace", "collections.OrderedDict",
                                    "deepspeed.runtime.zero.config.ZeroStageEnum",
                                    "builtins.eval"], path="ckpt.pt")
    assert snippet.splitlines()[0] == "import argparse, deepspeed.runtime.zero.config, torch"
    assert "OrderedDict" not in snippet and "eval" not in snippet
    assert "torch.load('ckpt.pt', weights_only=True)" in snippet


def test_key_line_finds_the_cause_inside_torch_boilerplate(tmp_path):
    torch.save({"a": np.zeros(2)}, tmp_path / "a.pt")
    line = key_line(_fail(tmp_path / "a.pt"))
    assert line == ("Unsupported global: GLOBAL numpy._core.multiarray._reconstruct was not "
                    "an allowed global by default.")


def test_hf_trainer_rng_state(tmp_path):
    np.random.seed(3)
    state = {"numpy": np.random.get_state(), "loss": np.float64(0.5)}
    path = tmp_path / "rng_state.pth"
    torch.save(state, path)
    finding = _diagnose(path, layout="hf-trainer")
    assert finding.code == "CK602"
    assert "HF Trainer RNG state" in finding.message
    assert finding.hint.startswith("ckptdoctor repair rng_state.pth")
    assert "PR #34632" in finding.hint
    assert "numpy.dtypes.UInt32DType" in finding.detail["allowlist"]
    # the pasted snippet really loads the file
    snippet = finding.hint.split("\n", 2)[2].split("\ntransformers")[0]
    ckpt = _run_snippet(snippet, tmp_path)
    np.testing.assert_array_equal(ckpt["numpy"][1], state["numpy"][1])
    assert ckpt["loss"] == state["loss"]


def test_numpy1_names_under_numpy2_get_tuple_aliases_that_load(tmp_path):
    np.random.seed(4)
    state = {"numpy": np.random.get_state()}
    torch.save(state, tmp_path / "new.pth")
    path = tmp_path / "rng_state_0.pth"
    _numpy1_spelled(tmp_path / "new.pth", path)
    finding = _diagnose(path)
    assert finding.code == "CK602"
    assert "written under numpy 1" in finding.message
    assert ('(numpy._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")'
            in finding.hint)
    snippet = "\n".join(finding.hint.splitlines()[2:5])
    ckpt = _run_snippet(snippet, tmp_path)
    np.testing.assert_array_equal(ckpt["numpy"][1], state["numpy"][1])


def test_accelerate_random_states(tmp_path):
    path = tmp_path / "random_states_0.pkl"
    torch.save({"step": 3, "numpy_random_seed": np.random.get_state()}, path)
    finding = _diagnose(path)
    assert "Accelerate" in finding.message
    assert "#3036" in finding.hint and "#3247" in finding.hint
    assert "WITHOUT" in finding.hint  # accelerate swallows this failure


def test_lightning_hparams(tmp_path):
    path = tmp_path / "epoch=1-step=10.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"args": argparse.Namespace(lr=1.0)}},
               path)
    finding = _diagnose(path)
    assert finding.code == "CK602" and "Lightning" in finding.message
    assert "Lightning >= 2.6" in finding.hint


def test_unknown_global_without_static_scan_names_it_from_the_error(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"d": collections.deque([1])}, path)
    finding = diagnose(path.name, _fail(path))
    assert finding.code == "CK601"  # no static scan: nothing proves an allow-list suffices
    assert "collections.deque" in finding.message
    assert "collections.deque" in finding.hint


def test_protocol4_pickle(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "p4.pt", pickle_protocol=4)
    finding = _diagnose(tmp_path / "p4.pt")
    assert finding.code == "CK108" and "protocol 4" in finding.message


def test_truncated_zip(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    finding = _diagnose(tmp_path / "cut.pt")
    assert finding.code == "CK201" and "truncated" in finding.message


def test_empty_file(tmp_path):
    (tmp_path / "optimizer.pt").write_bytes(b"")
    exc = _fail(tmp_path / "optimizer.pt")
    assert isinstance(exc, EOFError)
    assert diagnose("optimizer.pt", exc).code == "CK003"  # from the error alone
    assert _diagnose(tmp_path / "optimizer.pt").code == "CK003"


def test_missing_storage_record(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "full.pt")
    with zipfile.ZipFile(tmp_path / "full.pt") as zin, \
            zipfile.ZipFile(tmp_path / "holed.pt", "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info.filename, zin.read(info))
    finding = diagnose("holed.pt", _fail(tmp_path / "holed.pt"))
    assert finding.code == "CK202"


@pytest.mark.parametrize("mangle,code", [
    (lambda d: d[:5], "CK301"),
    (lambda d: struct.pack("<Q", 2**62) + d[8:], "CK302"),
    (lambda d: d[:-3], "CK305"),
    (lambda d: d[:8] + b"x" * struct.unpack("<Q", d[:8])[0] + d[8 + struct.unpack("<Q", d[:8])[0]:],
     "CK303"),
], ids=["small", "length", "coverage", "json"])
def test_safetensors_errors(tmp_path, mangle, code):
    save_file({"w": torch.ones(4)}, tmp_path / "ok.safetensors")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(mangle((tmp_path / "ok.safetensors").read_bytes()))
    with pytest.raises(LoadError) as err:
        load_with_chain(path)
    assert err.value.findings[0].code == code
    assert err.value.findings[0].detail["error_type"] == "SafetensorError"


def test_plain_pickle_is_not_a_torch_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    finding = diagnose("x.pt", _fail(tmp_path / "x.pt"))
    assert finding.code == "CK601" and "not a torch.save file" in finding.message


def test_dangerous_global_is_explained_not_offered(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"x": Evil()}, tmp_path / "scheduler.pt")
    with_scan = _diagnose(tmp_path / "scheduler.pt")
    error_only = diagnose("scheduler.pt", _fail(tmp_path / "scheduler.pt"))
    for finding in (with_scan, error_only):
        assert finding.code == "CK601" and "posix.system" in finding.message
        assert "safe_globals" not in finding.hint and "repair" not in finding.hint


def test_defaultdict_cannot_be_fixed_by_an_allowlist(tmp_path):
    torch.save({"counts": collections.defaultdict(int, a=1)}, tmp_path / "metrics.pt")
    finding = _diagnose(tmp_path / "metrics.pt")
    assert finding.code == "CK601"
    assert "whatever is allow-listed" in finding.message and "SETITEMS" in finding.message


def test_deepspeed_producer_from_names_and_file_name():
    who = producer("global_step10/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", set())
    assert who is not None and "DeepSpeed" in who.what and "0.16.0" in who.fixed_in
    who = producer("x.pt", {"deepspeed.runtime.zero.config.ZeroStageEnum"})
    assert "ZeroStageEnum" in who.what
    assert producer("x.pt", {"torch.Size"}) is None


def test_chain_findings_carry_the_cause(tmp_path):
    np.random.seed(5)
    torch.save({"numpy": np.random.get_state()}, tmp_path / "rng_state_1.pth")
    res = load_with_chain(tmp_path / "rng_state_1.pth", rel="ckpt/rng_state_1.pth")
    finding, = res.findings
    assert finding.code == "CK602" and finding.path == "ckpt/rng_state_1.pth"
    assert finding.detail["strategy"] == "weights_only"
