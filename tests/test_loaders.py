"""The loader chain on real files written by torch.save."""

from __future__ import annotations

import argparse
import builtins
import enum
import importlib.util
import os
import pathlib
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckptdoctor import safe_load as package_safe_load
from ckptdoctor.codes import Code
from ckptdoctor.loaders import (
    STRATEGIES,
    AllowList,
    LoadContext,
    LoadError,
    Trusted,
    _static_scan,
    load_with_chain,
    safe_load,
)
from ckptdoctor.model import FileInfo
from ckptdoctor.standins import AllowListError, EnumStandIn, StandIn
from tests.hide import hidden, rerun_without

FIXTURES_NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


COLOR = f"{Color.__module__}.{Color.__qualname__}"


def _safe_globals() -> set:
    return set(torch.serialization.get_safe_globals())


def _rng_state():
    np.random.seed(7)
    return {"python": 3, "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
            "loss": np.float64(0.125), "step": np.int64(42)}


def _assert_rng_equal(got, want):
    assert got["numpy"][0] == "MT19937"
    np.testing.assert_array_equal(got["numpy"][1], want["numpy"][1])
    assert got["numpy"][1].dtype == want["numpy"][1].dtype
    assert tuple(got["numpy"][2:]) == tuple(want["numpy"][2:])
    assert torch.equal(got["cpu"], want["cpu"])
    assert got["loss"] == want["loss"] and type(got["loss"]) is np.float64
    assert got["step"] == want["step"] and type(got["step"]) is np.int64


@pytest.fixture
def rng_file(tmp_path):
    state = _rng_state()
    path = tmp_path / "rng_state.pth"
    torch.save(state, path)
    return path, state


def test_strategies_are_one_ordered_tuple():
    assert [s.name for s in STRATEGIES] == ["weights_only", "allowlist", "trusted"]


def test_importing_the_loaders_does_not_import_torch():
    code = "import sys, ckptdoctor.loaders, ckptdoctor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"


def test_numpy_rng_state_needs_the_allowlist_and_loads_equal(rng_file):
    path, state = rng_file
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)  # what a resuming Trainer does
    before = _safe_globals()

    res = load_with_chain(path)

    assert res.strategy == "allowlist"
    assert [(a.strategy, a.outcome) for a in res.attempts] == [
        ("weights_only", "failed"), ("allowlist", "loaded")]
    assert "Unsupported global" in res.attempts[0].error
    assert res.attempts[0].error_type == "UnpicklingError"
    assert {"numpy._core.multiarray._reconstruct", "numpy.dtypes.UInt32DType",
            "numpy._core.multiarray.scalar"} <= set(res.attempts[1].allowlist)
    assert res.attempts[1].standins == []  # numpy is installed: the real objects
    assert all(a.seconds >= 0 for a in res.attempts)
    _assert_rng_equal(res.obj, state)
    assert [f.code for f in res.findings] == ["CK602"]
    assert _safe_globals() == before


def test_two_loads_in_a_row_leave_no_globals_behind(rng_file, tmp_path):
    path, _ = rng_file
    before = _safe_globals()
    load_with_chain(path)
    load_with_chain(path)
    assert _safe_globals() == before
    # a later plain load is not helped by anything the chain registered
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)


def test_callers_own_safe_globals_survive_the_chain(rng_file):
    path, _ = rng_file
    mine = (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct")
    torch.serialization.add_safe_globals([mine])
    try:
        load_with_chain(path)
        assert mine in _safe_globals()
    finally:
        torch.serialization.clear_safe_globals()


def test_safe_globals_restored_when_the_allowlisted_load_raises(rng_file, tmp_path):
    """A real failure inside the allow-listed load (the RNG tensor's storage record is gone,
    as after a damaged copy) must still leave torch's safe_globals as they were."""
    import zipfile

    path, _ = rng_file
    damaged = tmp_path / "damaged_rng.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:
                dst.writestr(item, src.read(item))
    before = _safe_globals()
    with pytest.raises(LoadError) as err:
        load_with_chain(damaged)
    assert err.value.attempts[1].strategy == "allowlist"
    assert err.value.attempts[1].outcome == "failed"
    assert _safe_globals() == before


def test_namespace_and_path_load_as_the_real_classes(tmp_path):
    args = argparse.Namespace(lr=3e-4, out=pathlib.Path("/runs/a"), tags=["x"])
    torch.save({"args": args, "root": pathlib.Path("/data")}, tmp_path / "hparams.pt")
    res = load_with_chain(tmp_path / "hparams.pt")
    assert res.strategy == "allowlist"
    assert isinstance(res.obj["args"], argparse.Namespace) and res.obj["args"] == args
    assert res.obj["root"] == pathlib.Path("/data")


def test_unknown_enum_needs_allow_then_loads_the_real_member(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"color": Color.GREEN, "w": torch.ones(2)}, path)

    with pytest.raises(LoadError) as err:
        load_with_chain(path)
    attempts = err.value.attempts
    assert [(a.strategy, a.outcome) for a in attempts] == [
        ("weights_only", "failed"), ("allowlist", "refused"), ("trusted", "skipped")]
    assert attempts[1].error_type == "NotVouchedError" and COLOR in attempts[1].error
    finding, = err.value.findings
    assert finding.code == "CK601" and f"--allow {COLOR}" in finding.hint

    res = load_with_chain(path, allow=[COLOR])
    assert res.strategy == "allowlist" and res.obj["color"] is Color.GREEN


def test_trust_alone_admits_no_unknown_name_and_says_which_allow_flags(tmp_path):
    """--trust is the vetted unpickler: an unknown class loads only when named with --allow;
    the refusal lists the exact flag."""
    path = tmp_path / "state.pt"
    torch.save({"color": Color.RED}, path, pickle_protocol=4)  # only the full unpickler reads it
    name = f"{Color.__module__}.Color"
    with pytest.raises(LoadError) as err:
        load_with_chain(path, trust=True)
    trusted = err.value.attempts[-1]
    assert (trusted.strategy, trusted.outcome) == ("trusted", "refused")
    assert f"--allow {name}" in trusted.error
    res = load_with_chain(path, trust=True, allow=(name,))
    assert res.strategy == "trusted" and res.obj["color"] is Color.RED
    assert [a.outcome for a in res.attempts][-1] == "loaded"


def test_trusted_never_runs_without_trust(tmp_path, monkeypatch):
    path = tmp_path / "proto4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)  # only weights_only=False loads it
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(LoadError) as err:
        load_with_chain(path)
    assert False not in calls
    assert err.value.attempts[-1].strategy == "trusted"
    assert err.value.attempts[-1].outcome == "skipped"
    assert err.value.findings[0].code == "CK108"

    res = load_with_chain(path, trust=True)
    assert res.strategy == "trusted" and calls[-1] is False
    assert torch.equal(res.obj["w"], torch.ones(2))


def _deepspeed_like_file(tmp_path):
    """Hand-built: deepspeed is not importable here (not installed, or hidden by
    tests/hide.rerun_without), so its classes are defined in modules registered in sys.modules
    only while torch.save pickles them; the previous entries are put back afterwards."""
    assert hidden("deepspeed")
    names = ["deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero",
             "deepspeed.runtime.zero.config", "deepspeed.runtime.fp16",
             "deepspeed.runtime.fp16.loss_scaler"]
    mods = {n: types.ModuleType(n) for n in names}

    class ZeroStageEnum(int, enum.Enum):
        disabled = 0
        optimizer_states = 1
        gradients = 2
        weights = 3

    class LossScaler:
        def __init__(self, scale):
            self.cur_scale = scale
            self.dynamic = False

    for cls, mod in ((ZeroStageEnum, "deepspeed.runtime.zero.config"),
                     (LossScaler, "deepspeed.runtime.fp16.loss_scaler")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    sys.modules.update(mods)
    try:
        torch.save({"optimizer_state_dict": {
            "zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1024.0),
            "partition_count": 2, "base_optimizer_state": {"exp_avg": torch.arange(4.0)}},
            "ds_version": "0.14.4"}, path)
    finally:
        for n in names:
            del sys.modules[n]
        sys.modules.update(saved)
    assert hidden("deepspeed")
    return path


def test_deepspeed_file_loads_through_standins_without_deepspeed(tmp_path, request):
    if not hidden("deepspeed"):  # installed here: run this test where it is missing
        rerun_without("deepspeed", request.node.nodeid)
        return
    deepspeed_like_file = _deepspeed_like_file(tmp_path)
    before = _safe_globals()
    res = load_with_chain(deepspeed_like_file)
    assert res.strategy == "allowlist"
    assert set(res.attempts[1].standins) == {"deepspeed.runtime.zero.config.ZeroStageEnum",
                                             "deepspeed.runtime.fp16.loss_scaler.LossScaler"}
    opt = res.obj["optimizer_state_dict"]
    assert isinstance(opt["zero_stage"], EnumStandIn) and opt["zero_stage"].value == 2
    scaler = opt["loss_scaler"]
    assert isinstance(scaler, StandIn)
    assert scaler.state == {"cur_scale": 1024.0, "dynamic": False} and scaler.cur_scale == 1024.0
    assert torch.equal(opt["base_optimizer_state"]["exp_avg"], torch.arange(4.0))
    assert sys.modules.get("deepspeed") is None  # nothing imported it
    assert _safe_globals() == before
    assert "DeepSpeed >= 0.16.0" in res.findings[0].hint


def test_megatron_file_loads_through_standins_without_megatron(tmp_path):
    """A real-layout Megatron checkpoint (tests/fixtures/factory.py: pickled under the real
    megatron.core.enums.ModelType name; megatron-core is not installed) loads for inspection."""
    from tests.fixtures import factory as fx

    assert importlib.util.find_spec("megatron") is None
    root = fx.make_megatron(tmp_path / "meg", fmt="torch")
    path = root / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt"
    res = load_with_chain(path)
    assert res.strategy == "allowlist"
    assert "megatron.core.enums.ModelType" in res.attempts[1].standins
    assert isinstance(res.obj["args"].model_type, EnumStandIn)
    assert res.obj["iteration"] == 100
    assert "megatron" not in sys.modules


@pytest.mark.parametrize("payload", ["system", "exec"])
def test_malicious_file_is_refused_even_with_trust(tmp_path, payload, monkeypatch):
    canary = tmp_path / "CANARY"

    class Evil:
        def __reduce__(self):
            if payload == "system":
                return os.system, (f"touch {canary}",)
            return builtins.exec, (f"open({str(canary)!r}, 'w').close()",)

    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1), "x": Evil()}, path)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(LoadError) as err:
        load_with_chain(path, trust=True)
    # the static scan refuses before any strategy runs: torch never sees the file
    assert [(a.strategy, a.outcome) for a in err.value.attempts] == [("static", "refused")]
    # protocol 2 spells builtins the Python 2 way in the file
    spelled = "posix.system" if payload == "system" else "__builtin__.exec"
    assert spelled in err.value.attempts[0].error
    assert err.value.findings[0].code == "CK101"
    assert not canary.exists()

    with pytest.raises(AllowListError):  # --allow never allow-lists it either
        load_with_chain(path, allow=["posix.system", "builtins.exec"], trust=True)
    assert not canary.exists()


def test_trusted_refused_when_the_static_scan_is_malformed(tmp_path):
    path = tmp_path / "proto4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    static = _static_scan(path, "proto4.pt")
    static.findings.append(Code.PICKLE_MALFORMED.finding(
        "proto4.pt", "malformed pickle at opcode 3: stack underflow"))
    with pytest.raises(LoadError) as err:
        load_with_chain(path, trust=True, static=static)
    assert err.value.attempts[-1].outcome == "refused"
    assert "static scan incomplete" in err.value.attempts[-1].error


def test_trusted_refused_when_the_file_changed_after_the_scan(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"color": Color.RED}, path)
    ctx = LoadContext((), True, "cpu", True, _static_scan(path, "a.pt"), path.stat())
    torch.save({"color": Color.GREEN, "more": torch.zeros(100)}, path)
    attempt = Trusted().attempt(path, ctx)
    assert attempt.outcome == "refused" and "changed" in attempt.error


def test_trusted_refused_for_a_file_that_cannot_be_scanned(tmp_path):
    path = tmp_path / "blob.pt"
    path.write_bytes(b"\x00garbage that is no pickle")
    with pytest.raises(LoadError) as err:
        load_with_chain(path, trust=True)
    assert err.value.attempts[-1].outcome == "refused"


def test_legacy_file_loads_with_mmap_requested(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(3)}, path, _use_new_zipfile_serialization=False)
    res = load_with_chain(path, mmap=True)
    assert res.strategy == "weights_only" and torch.equal(res.obj["w"], torch.arange(3))


def test_allowlist_strategy_skipped_when_nothing_to_allow(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(LoadError) as err:
        load_with_chain(path)
    assert err.value.attempts[1].outcome == "skipped"
    assert err.value.findings[0].code == "CK003"


def test_safetensors_load_without_strategies(tmp_path):
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "model.safetensors")
    res = load_with_chain(tmp_path / "model.safetensors")
    assert res.strategy == "safetensors" and len(res.attempts) == 1
    assert torch.equal(res.obj["w"], torch.arange(6.0).reshape(2, 3))

    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    with pytest.raises(LoadError) as err:
        load_with_chain(tmp_path / "cut.safetensors")
    assert err.value.findings[0].code == "CK305"


def test_torch_zip_misnamed_safetensors_is_loaded_as_what_it_is(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save({"w": torch.ones(3)}, path)  # torch.load(path) would hand it to safetensors
    res = load_with_chain(path)
    assert res.strategy == "weights_only" and torch.equal(res.obj["w"], torch.ones(3))


def test_safe_load_returns_the_object_or_raises(rng_file, tmp_path):
    path, state = rng_file
    _assert_rng_equal(safe_load(path), state)
    _assert_rng_equal(package_safe_load(path), state)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        safe_load(tmp_path / "empty.pt")


def _numpy1_spelled(src: Path, dst: Path) -> None:
    """Stand-in for the real numpy-1 fixture: rewrite numpy 2's GLOBAL lines to numpy 1's
    spelling in data.pkl (protocol 2 GLOBAL opcodes are text lines, so the pickle stays
    valid) and rebuild the zip."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"cnumpy._core.multiarray\n" in data
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            zout.writestr(info.filename, data)


def test_numpy1_spelled_file_loads_under_numpy2_via_tuple_aliases(rng_file, tmp_path):
    assert int(np.__version__.split(".")[0]) >= 2
    path, state = rng_file
    old = tmp_path / "numpy1" / "rng_state.pth"
    old.parent.mkdir()
    _numpy1_spelled(path, old)
    with pytest.raises(Exception, match="numpy.core.multiarray._reconstruct"):
        torch.load(old, weights_only=True)
    # registering numpy 2's function object does not help: it registers numpy._core's name
    with torch.serialization.safe_globals([np._core.multiarray._reconstruct]), \
            pytest.raises(Exception, match="numpy.core.multiarray._reconstruct"):
        torch.load(old, weights_only=True)

    res = load_with_chain(old)
    assert res.strategy == "allowlist"
    assert "numpy.core.multiarray._reconstruct" in res.attempts[1].allowlist
    assert "numpy.core.multiarray.scalar" in res.attempts[1].allowlist
    _assert_rng_equal(res.obj, state)


@pytest.mark.skipif(not FIXTURES_NUMPY1.is_dir(), reason="numpy-1 fixtures not generated yet")
def test_real_numpy1_fixtures_load_under_numpy2():
    """Files written by numpy 1 (numpy.core.* names) load here through tuple aliases."""
    checked = 0
    for path in sorted(p for p in FIXTURES_NUMPY1.rglob("*") if p.is_file()):
        static = _static_scan(path, path.name)
        if static is None or not any(g.name.startswith("numpy.core.") for g in static.globals):
            continue
        res = load_with_chain(path, static=static)
        assert res.strategy == "allowlist", path
        assert any(n.startswith("numpy.core.") for n in res.attempts[1].allowlist)
        checked += 1
    assert checked, "no fixture references numpy.core.* names"


def test_unscannable_static_info_still_tries_the_safe_strategies(rng_file):
    path, _ = rng_file
    blind = FileInfo("rng_state.pth", "unknown", path.stat().st_size)
    with pytest.raises(LoadError) as err:
        load_with_chain(path, static=blind, trust=True)
    assert [a.outcome for a in err.value.attempts] == ["failed", "skipped", "refused"]


def test_allowlist_attempt_reports_refusal_for_dangerous_static_globals(tmp_path):
    from ckptdoctor.model import GlobalClass, GlobalRef

    static = FileInfo("x.pt", "torch-zip", 1,
                      globals=[GlobalRef("builtins.eval", GlobalClass.DANGEROUS, "GLOBAL")])
    ctx = LoadContext((), False, "cpu", True, static, os.stat(__file__))
    attempt = AllowList().attempt(tmp_path / "x.pt", ctx)
    assert attempt.outcome == "refused" and "builtins.eval" in attempt.error
