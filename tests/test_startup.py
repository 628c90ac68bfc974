"""Start-up cost of the CLI, counted, not timed: which modules a run imports.

`validate --deep` of a 1.5 GB file reads for about a second, so what the process imports before
reading is a visible part of its time (docs/scale.md). These tests run the real CLI in a child
process and look at its sys.modules afterwards: a new eager import of torch, numpy or rich, or a
large new batch of modules, fails here. (typer >= 0.27 coerces option values with pydantic, so a
command with options imports it: that is typer's cost, not worked around here.) The budgets are
module counts with about 8% headroom over what the code imports today."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def imported(argv: list[str], tmp_path: Path) -> set[str]:
    """The modules loaded by `python -m ckptdoctor ARGV`, read from the child itself."""
    dump = tmp_path / "modules.json"
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['ckptdoctor', *{argv!r}]\n"
            "try:\n    runpy.run_module('ckptdoctor', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"open({str(dump)!r}, 'w').write(json.dumps("
            "[sys.modules['ckptdoctor'].__file__, *sorted(sys.modules)]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert dump.exists(), proc.stderr
    where, *mods = json.loads(dump.read_text())
    assert where.startswith(str(ROOT)) and "ckptdoctor.cli" in mods, where
    return set(mods)


def top(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    torch.save({"w": torch.randn(64, 64).to(torch.bfloat16), "step": torch.tensor(3)},
               d / "model.pt")
    save_file({"w": torch.randn(8, 8)}, d / "model.safetensors", metadata={"format": "pt"})
    save_file({"ids": torch.arange(64)}, d / "ids.safetensors", metadata={"format": "pt"})
    return d


def test_help_imports_no_rich_no_pydantic(tmp_path):
    mods = imported(["--help"], tmp_path)
    assert not top(mods) & {"pydantic", "pydantic_core", "rich", "numpy", "torch"}
    assert len(mods) <= 185, len(mods)


def test_static_validate_imports_no_numpy_no_torch(files, tmp_path):
    for argv in (["validate", str(files / "model.safetensors")],
                 ["validate", "--format", "json", str(files / "model.pt")]):
        mods = imported(argv, tmp_path)
        assert not top(mods) & {"numpy", "torch"}, argv
        assert "ckptdoctor.stream" not in mods, argv  # no byte is streamed without --deep
        assert len(mods) <= 395, (argv, len(mods))


def test_deep_imports_numpy_only_for_float_tensors(files, tmp_path):
    mods = imported(["validate", "--deep", str(files / "model.pt")], tmp_path)
    assert "numpy" in mods  # the bf16 tensor's NaN/Inf bit test
    assert "torch" not in top(mods)
    assert "rich.progress" not in mods and "rich.table" not in mods  # stderr is no terminal
    assert len(mods) <= 500, len(mods)
    ints = imported(["validate", "--deep", str(files / "ids.safetensors")], tmp_path)
    assert not top(ints) & {"numpy", "torch"}  # CRC/hash only: no value check


def test_stream_crc32_is_zlibs_crc32():
    """stream.py's CRC-32 (zlib-ng's when installed) equals zlib.crc32: on every length 0-64,
    with running start values, on memoryview slices, and on 9 MiB of random bytes fed in
    unaligned pieces as stream_file feeds a record."""
    import random
    import zlib

    from ckptdoctor.stream import crc32

    rnd = random.Random(12)
    data = bytes(rnd.getrandbits(8) for _ in range(4096)) * 2304  # 9 MiB
    for n in range(65):
        assert crc32(data[:n]) == zlib.crc32(data[:n])
        assert crc32(data[:n], 0xDEADBEEF) == zlib.crc32(data[:n], 0xDEADBEEF)
    view, running, at = memoryview(data), 0, 0
    while at < len(data):
        step = rnd.randrange(1, 3 << 20)
        running = crc32(view[at:at + step], running)
        at += step
    assert running == zlib.crc32(data)
