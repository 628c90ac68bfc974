"""The static weights_only verdict and allow-list, proven against the real torch.load.

Every case is written with the real torch.save; the verdict must match what
torch.load(weights_only=True) does, and the reported allow-list must make the load succeed in
ONE pass (including BUILD-time numpy dtype classes that torch's own static helper misses)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import importlib
import pathlib
import pickle
import random

import numpy as np
import pytest
import torch

from ckptdoctor.formats import detect_file


class Color(enum.IntEnum):
    RED = 1


@dataclasses.dataclass
class Cfg:
    lr: float = 0.1
    name: str = "x"


def _resolve(name: str):
    """Dotted name -> (object, name): tuple aliases keep the file's numpy.core spelling."""
    mod, _, attr = name.rpartition(".")
    real_mod = mod
    if mod.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
        real_mod = "numpy._core" + mod[len("numpy.core"):]
    if mod == __name__:
        return (globals()[attr], name)
    return (getattr(importlib.import_module(real_mod), attr), name)


CASES = {
    "plain": lambda: {"w": torch.ones(2, 3), "step": 3, "names": ["a"],
                      "od": collections.OrderedDict(a=1)},
    "numpy_rng": lambda: {"numpy": np.random.get_state(), "python": random.getstate(),
                          "cpu": torch.get_rng_state()},
    "numpy_scalars": lambda: {"f": np.float64(1.5), "i": np.int64(2), "b": np.bool_(True),
                              "f32": np.float32(0.5)},
    "numpy_arrays": lambda: {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                             "u": np.zeros(3, dtype=np.uint8), "c": np.ones(2, dtype=np.complex64)},
    "namespace_path": lambda: {"hparams": argparse.Namespace(lr=0.1, data=pathlib.Path("/tmp/x"))},
    "int_enum": lambda: {"c": Color.RED},
    "dataclass": lambda: {"cfg": Cfg()},
    "bytes_set_complex": lambda: {"b": b"abc", "s": {1, 2}, "c": complex(1, 2),
                                  "ba": bytearray(b"x")},
    "defaultdict": lambda: {"d": collections.defaultdict(list, a=[1])},
    "slice": lambda: {"s": slice(1, 5, 2)},
    "parameter": lambda: {"p": torch.nn.Parameter(torch.ones(2))},
    "bf16_view": lambda: {"v": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)[:, 1]},
    # one array per numpy dtype class the allow-list must name (itemsize -> class table)
    "numpy_dtype_table": lambda: {k: np.zeros(2, dtype=k) for k in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "longdouble", "complex64", "complex128",
        "clongdouble", "datetime64[s]", "timedelta64[s]", "U3", "S3")},
}


def _write(tmp_path, name, obj, **kw):
    p = tmp_path / f"{name}.pt"
    torch.save(obj, p, **kw)
    return p


def _plain_loads(p) -> bool:
    try:
        torch.load(p, weights_only=True)
        return True
    except pickle.UnpicklingError:
        return False


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_verdict_matches_torch(tmp_path, name, legacy):
    p = _write(tmp_path, name, CASES[name](), _use_new_zipfile_serialization=not legacy)
    info = detect_file(p, p.name)
    assert info.format == ("torch-legacy" if legacy else "torch-zip")
    v = info.weights_only
    assert v is not None
    assert v.loads == _plain_loads(p), (v, info.globals)
    if v.loads:
        assert v.allowlist == []
        return
    with torch.serialization.safe_globals([_resolve(n) for n in v.allowlist]):
        if v.fixable:
            torch.load(p, weights_only=True)  # the one-pass allow-list is complete
        else:
            with pytest.raises(pickle.UnpicklingError):
                torch.load(p, weights_only=True)


def test_minimal_allowlist_each_name_needed(tmp_path):
    """Dropping any single name from the reported list makes the load fail again."""
    p = _write(tmp_path, "rng", {**CASES["numpy_rng"](), **CASES["numpy_scalars"]()})
    allow = detect_file(p).weights_only.allowlist
    assert "numpy.dtypes.UInt32DType" in allow  # the BUILD trap
    assert "numpy.dtypes.Float64DType" in allow
    from torch.serialization import get_unsafe_globals_in_checkpoint

    assert "numpy.dtypes.UInt32DType" not in get_unsafe_globals_in_checkpoint(p)
    for dropped in allow:
        rest = [_resolve(n) for n in allow if n != dropped]
        with torch.serialization.safe_globals(rest), pytest.raises(pickle.UnpicklingError):
            torch.load(p, weights_only=True)


def test_defaultdict_is_not_fixable(tmp_path):
    p = _write(tmp_path, "dd", CASES["defaultdict"]())
    v = detect_file(p).weights_only
    assert not v.fixable and any("SETITEMS" in b for b in v.blockers)


def test_protocol4_is_unsupported_operand_149(tmp_path):
    p = _write(tmp_path, "p4", {"w": torch.ones(2)}, pickle_protocol=4)
    info = detect_file(p)
    assert not info.weights_only.fixable
    assert any("Unsupported operand 149" in b for b in info.weights_only.blockers)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 149"):
        torch.load(p, weights_only=True)


def test_tensors_from_metadata(tmp_path):
    sd = {
        "a": torch.zeros(3, 4, dtype=torch.bfloat16),
        "b": {"c": torch.ones(5, dtype=torch.int64)},
    }
    p = _write(tmp_path, "t", sd)
    tensors = {t.name: t for t in detect_file(p).tensors}
    assert tensors["a"].shape == (3, 4) and tensors["a"].dtype == "bfloat16"
    assert tensors["a"].nbytes == 24
    assert tensors["b.c"].shape == (5,) and tensors["b.c"].dtype == "int64"


def test_storage_record_missing_is_reported(tmp_path):
    import zipfile

    p = _write(tmp_path, "t", {"a": torch.ones(4)})
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            if "/data/0" not in item.filename:
                dst.writestr(item, src.read(item))
    codes = {f.code for f in detect_file(damaged).findings}
    assert "CK202" in codes
