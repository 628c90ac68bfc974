"""Start-up cost of the CLI, counted, not timed: which modules a run imports.

`validate --deep` of a 1.5 GB file reads for about a second, so what the process imports before
reading is a visible part of its time (docs/scale.md). These tests run the real CLI in a child
process and look at its sys.modules afterwards: a new eager import of pydantic, torch, numpy or
rich, or a large new batch of modules, fails here. The budgets are module counts with about 8%
headroom over what the code imports today."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer.main
from safetensors.torch import save_file

from ckptdoctor.cli import _SLOW, _plain_value, app

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


def test_static_validate_imports_no_numpy_no_pydantic(files, tmp_path):
    for argv in (["validate", str(files / "model.safetensors")],
                 ["validate", "--format", "json", str(files / "model.pt")]):
        mods = imported(argv, tmp_path)
        assert not top(mods) & {"pydantic", "pydantic_core", "numpy", "torch"}, argv
        assert "ckptdoctor.stream" not in mods, argv  # no byte is streamed without --deep
        assert len(mods) <= 330, (argv, len(mods))


def test_deep_imports_numpy_only_for_float_tensors(files, tmp_path):
    mods = imported(["validate", "--deep", str(files / "model.pt")], tmp_path)
    assert "numpy" in mods  # the bf16 tensor's NaN/Inf bit test
    assert not top(mods) & {"pydantic", "pydantic_core", "torch"}
    assert "rich.progress" not in mods and "rich.table" not in mods  # stderr is no terminal
    assert len(mods) <= 420, len(mods)
    ints = imported(["validate", "--deep", str(files / "ids.safetensors")], tmp_path)
    assert not top(ints) & {"numpy", "pydantic", "torch"}  # CRC/hash only: no value check


def _samples(param) -> list:
    ann = param.type_descriptor.annotation
    out = [param.default, None]
    if param.multiple:
        return out + [("a", "CK5"), (), ["x"]]
    if ann is int:
        return out + ["0", "3", " 3", "-1", "abc", "1.5", "+2", "", "10"]
    if ann is float:
        return out + ["1e-3", "inf", "abc", " 2 ", "-0.5", ""]
    if isinstance(ann, type) and issubclass(ann, __import__("enum").Enum):
        return out + [c.value for c in ann] + [c.value.upper() for c in ann] + ["nope", ""]
    return out + ["a/b", "x", "-", "", " s "]


def test_plain_coercion_agrees_with_typer():
    """Every value the stdlib path coerces, typer's own (pydantic) coercion coerces to the same
    value of the same type; every value typer rejects is left to typer (_SLOW)."""
    try:  # typer 0.27+'s runtime coercion; other typers keep their own (cli._plain_params)
        from typer._click.core import Context
        from typer._coercion import build_runtime_param
    except ImportError:
        pytest.skip("this typer has no lazy runtime parameters to compare with")
    group = typer.main.get_command(app)
    checked = 0
    for name, cmd in [("", group), *group.commands.items()]:
        ctx = Context(cmd, info_name=name or "ckptdoctor")
        for param in cmd.get_params(ctx):
            if not hasattr(param, "type_descriptor"):
                continue
            oracle = build_runtime_param(param.type_descriptor)
            for value in _samples(param):
                plain = _plain_value(param, value)
                try:
                    want = oracle.coerce(value, param=param, ctx=ctx)
                except Exception:  # noqa: BLE001 - typer's usage errors
                    assert plain is _SLOW, (name, param.name, value, plain)
                    continue
                if plain is _SLOW:
                    continue
                assert plain == want and type(plain) is type(want), (name, param.name, value)
                checked += 1
    assert checked > 100


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
