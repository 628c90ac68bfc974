"""The CLI as users and CI scripts drive it: exit codes, one-line errors, output formats."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ckptdoctor import __version__
from ckptdoctor.cli import app

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def ckpt_dir(tmp_path):
    """A small checkpoint dir: safetensors weights, a clean optimizer, a numpy RNG state."""
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file({"w": torch.ones(2, 2)}, d / "model.safetensors", metadata={"format": "pt"})
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, d / "optimizer.pt")
    torch.save({"numpy": np.random.get_state()}, d / "rng_state.pth")
    return d


def test_version():
    r = cli("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_every_command_has_help_and_a_doc_page():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    for cmd in ("inspect", "validate", "latest", "repair", "convert"):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output
        assert (docs / f"{cmd}.md").is_file(), cmd


def test_missing_path_is_one_line_exit_2(tmp_path):
    for cmd in ("inspect", "validate", "latest", "repair"):
        proc = subprocess.run([sys.executable, "-m", "ckptdoctor", cmd, str(tmp_path / "nope")],
                              capture_output=True, text=True)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "CK001" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_inspect_json_is_one_document(ckpt_dir):
    r = cli("inspect", "--json", ckpt_dir)
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1
    files = {f["path"]: f for f in doc["files"]}
    assert files["rng_state.pth"]["weights_only"]["loads"] is False
    assert "numpy.dtypes.UInt32DType" in files["rng_state.pth"]["weights_only"]["allowlist"]
    assert files["optimizer.pt"]["weights_only"] == {"loads": True, "allowlist": []}
    assert files["model.safetensors"]["weights_only"] is None
    assert {"code", "severity", "path", "message", "hint"} <= set(doc["findings"][0])


def test_inspect_tensors(ckpt_dir):
    r = cli("inspect", "--json", "--tensors", ckpt_dir / "model.safetensors")
    doc = json.loads(r.stdout)
    assert doc["files"][0]["tensors"] == [{"name": "w", "dtype": "float32", "shape": [2, 2],
                                           "nbytes": 16}]


def test_validate_consumer_torch_fails_then_allow_passes(ckpt_dir):
    r = cli("validate", "--consumer", "torch", "--format", "json", ckpt_dir)
    assert r.exit_code == 1
    codes = {(f["code"], f["path"]) for f in json.loads(r.stdout)["findings"]}
    assert ("CK601", "rng_state.pth") in codes
    allow = ["--allow", "numpy._core.multiarray._reconstruct", "--allow", "numpy.ndarray",
             "--allow", "numpy.dtype", "--allow", "numpy.dtypes.UInt32DType"]
    r = cli("validate", "--consumer", "torch", *allow, ckpt_dir)
    assert r.exit_code == 0, r.output


def test_validate_select_ignore_fail_on(ckpt_dir):
    assert cli("validate", "--consumer", "torch", "--ignore", "CK6", ckpt_dir).exit_code == 0
    assert cli("validate", "--consumer", "torch", "--select", "CK3", ckpt_dir).exit_code == 0
    # a folder of no known layout is a warning (CK008): it fails only with --fail-on warning
    ok = cli("validate", "--ignore", "CK6", "--ignore", "CK008", "--fail-on", "warning", ckpt_dir)
    assert ok.exit_code == 0, ok.output
    assert cli("validate", "--ignore", "CK6", "--fail-on", "warning", ckpt_dir).exit_code == 1


def test_validate_junit_sarif_github(ckpt_dir):
    r = cli("validate", "--consumer", "torch", "--format", "junit", ckpt_dir)
    suite = ET.fromstring(r.stdout).find("testsuite")
    assert int(suite.get("failures")) >= 1
    r = cli("validate", "--consumer", "torch", "--format", "sarif", ckpt_dir)
    sarif = json.loads(r.stdout)
    assert sarif["version"] == "2.1.0"
    assert any(res["ruleId"] == "CK601" for res in sarif["runs"][0]["results"])
    r = cli("validate", "--consumer", "torch", "--format", "github", ckpt_dir)
    assert any(line.startswith("::error file=") and "title=CK601" in line
               for line in r.stdout.splitlines())


def test_allow_refuses_dangerous_names(ckpt_dir):
    r = cli("validate", "--allow", "os.system", ckpt_dir)
    assert r.exit_code == 1 and "CK101" in r.output
    r = cli("validate", "--allow", "not a name", ckpt_dir)
    assert r.exit_code == 2


def test_manifest_detects_changed_file(ckpt_dir):
    (ckpt_dir / "rng_state.pth").unlink()  # keep only files plain torch loads
    assert cli("validate", "--write-manifest", ckpt_dir).exit_code == 0
    assert (ckpt_dir / ".ckptdoctor-manifest.json").is_file()
    assert cli("validate", ckpt_dir).exit_code == 0
    data = bytearray((ckpt_dir / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the manifest can tell
    (ckpt_dir / "model.safetensors").write_bytes(bytes(data))
    r = cli("validate", "--format", "json", ckpt_dir)
    assert r.exit_code == 1
    assert any(f["code"] == "CK503" for f in json.loads(r.stdout)["findings"])


def test_deep_catches_flipped_byte_in_torch_zip(tmp_path):
    p = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, p)
    data = bytearray(p.read_bytes())
    i = data.find(np.arange(1000, dtype=np.float32).tobytes()[400:408])
    data[i] ^= 0x01
    p.write_bytes(bytes(data))
    assert cli("validate", p).exit_code == 0  # the static checks cannot see it (nor can torch)
    r = cli("validate", "--deep", "--format", "json", p)
    assert r.exit_code == 1
    assert any(f["code"] == "CK204" for f in json.loads(r.stdout)["findings"])


def test_deep_reports_nan(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, p, metadata={"format": "pt"})
    r = cli("validate", "--deep", "--fail-on", "warning", "--format", "json", p)
    assert r.exit_code == 1
    assert any(f["code"] == "CK501" for f in json.loads(r.stdout)["findings"])


def test_load_reports_strategy(ckpt_dir):
    r = cli("validate", "--load", "--format", "json", ckpt_dir)
    found = {(f["code"], f["path"]) for f in json.loads(r.stdout)["findings"]}
    assert ("CK603", "optimizer.pt") in found
    assert ("CK602", "rng_state.pth") in found


@pytest.mark.parametrize("argv", [["inspect", "--json"], ["validate"]])
def test_static_commands_never_import_torch(ckpt_dir, argv):
    code = ("import sys, runpy\n"
            f"sys.argv = ['ckptdoctor', *{argv!r}, {str(ckpt_dir)!r}]\n"
            "try:\n    runpy.run_module('ckptdoctor', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "NO_TORCH" in proc.stderr, proc.stderr


def test_deep_validate_shows_a_progress_bar_on_a_terminal(tmp_path):
    """stderr on a pseudo-terminal gets a rich progress bar naming the file being read;
    piped stderr (every other test) gets none."""
    import os
    import pty

    p = tmp_path / "model.safetensors"
    save_file({f"w{i}": torch.zeros(2048, 2048) for i in range(8)}, p, metadata={"format": "pt"})
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ckptdoctor", "validate", "--deep", str(p)],
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait() == 0
    assert "━".encode() in seen and b"model.safetensors" in seen
    piped = subprocess.run([sys.executable, "-m", "ckptdoctor", "validate", "--deep", str(p)],
                           capture_output=True)
    assert "━".encode() not in piped.stderr
