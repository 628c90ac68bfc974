"""One error hierarchy and one CLI error table: every deliberate failure is a CkptdoctorError
with a stable code, the CLI turns each into one line and the exit code of its class, the same
in-process as under `python -m ckptdoctor`, and the docs table is the code's."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptdoctor import errors
from ckptdoctor.errors import CkptdoctorError, ExitCode
from tests.fixtures.factory import make_torch_zip

ROOT = Path(__file__).resolve().parents[1]


class _RunsShell:  # torch.save pickles it as a call of os.system: a code-executing global
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture()
def hostile(tmp_path) -> Path:
    p = tmp_path / "hostile.pt"
    torch.save({"w": torch.zeros(3), "x": _RunsShell()}, p)
    return p


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CKPTDOCTOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ckptdoctor", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def _in_process(*args: str):
    from ckptdoctor.cli import app

    return CliRunner().invoke(app, [*map(str, args)])


def test_public_errors_are_one_hierarchy_and_keep_their_old_bases_and_homes():
    import ckptdoctor
    from ckptdoctor.convert import ConvertError
    from ckptdoctor.diff import DiffError
    from ckptdoctor.integrations.core import CheckpointRejected
    from ckptdoctor.loaders import LoadError
    from ckptdoctor.pickles.policy import AllowListError, DangerousGlobalError, NotVouchedError
    from ckptdoctor.repair.backup import BackupRefused

    assert ckptdoctor.LoadError is LoadError is errors.LoadError
    assert ckptdoctor.CkptdoctorError is CkptdoctorError
    homes = [ConvertError, DiffError, CheckpointRejected, LoadError, AllowListError,
             DangerousGlobalError, NotVouchedError, BackupRefused]
    assert all(issubclass(c, CkptdoctorError) for c in homes)
    assert set(homes) <= set(errors.hierarchy())
    # what callers written for torch / stdlib catch still catches them
    assert issubclass(LoadError, pickle.UnpicklingError)
    assert issubclass(CheckpointRejected, RuntimeError)
    assert issubclass(AllowListError, ValueError) and issubclass(BackupRefused, OSError)
    # every class raised from a message names its code
    for cls in errors.hierarchy():
        assert cls.code is not None or cls in (CkptdoctorError, errors.UsageError,
                                              errors.PathError), cls


def test_load_error_from_a_real_hostile_file_carries_its_ck101(hostile):
    from ckptdoctor import safe_load

    with pytest.raises(pickle.UnpicklingError) as info:
        safe_load(hostile, trust=True)
    exc = info.value
    assert isinstance(exc, CkptdoctorError) and exc.exit_code == ExitCode.FINDINGS
    assert str(exc).startswith(f"cannot load {hostile}")  # the message torch users saw before
    assert exc.finding.code == "CK101" and exc.findings[0] is exc.finding


def test_convert_refusal_is_the_same_one_line_in_process_and_as_a_process(hostile, tmp_path):
    """The table is applied by the command group: CliRunner and `python -m` agree."""
    args = ("convert", hostile, tmp_path / "out.safetensors", "--to", "safetensors")
    proc = _python_m(*args)
    r = _in_process(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == r.exit_code == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert re.match(r"ckptdoctor: error: CK101 \S+", lines[0]), lines[0]  # the cause, not CK705
    assert r.stderr.strip() == lines[0]
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("args, exit_code, code", [
    (("validate", "{missing}"), 2, "CK001"),
    (("validate", "--framework-version", "torch", "{ok}"), 2, "CK090"),
    (("validate", "--select", "CK4O1", "{ok}"), 2, "CK091"),
    (("validate", "--allow", "os.system", "{ok}"), 1, "CK101"),
    (("repair", "--to", "onnx", "{ok}"), 2, "CK701"),
    (("repair", "--undo", "{ok}"), 1, "CK701"),
    (("diff", "{ok}", "{junk}"), 2, "CK901"),
    (("codes", "CK99"), 2, "CK091"),
])
def test_each_error_is_one_line_with_its_code_and_its_class_exit_code(tmp_path, args, exit_code,
                                                                       code):
    ok = make_torch_zip(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)  # hand-built: no library writes a broken safetensors file
    names = {"ok": ok, "missing": tmp_path / "nope.pt", "junk": junk}
    argv = [a.format(**names) for a in args]
    r = _in_process(*argv)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == exit_code, r.output
    assert len(lines) == 1 and lines[0].startswith(f"ckptdoctor: error: {code} "), r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_the_table_maps_every_row_and_debug_reraises_internal_errors(capsys, monkeypatch):
    from ckptdoctor.cli import ERRORS, _report

    monkeypatch.delenv("CKPTDOCTOR_DEBUG", raising=False)
    assert _report(ValueError("first\nsecond")) == 2
    assert capsys.readouterr().err.strip() == "ckptdoctor: internal error: ValueError: first"
    assert _report(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err.strip() == "ckptdoctor: interrupted"
    err = OSError(28, "No space left on device", "/x/out.pt")
    assert _report(err) == 2 and "CK710 /x/out.pt" in capsys.readouterr().err
    assert _report(errors.RepairError("nothing to undo", path="p")) == 1
    assert capsys.readouterr().err.strip() == "ckptdoctor: error: CK701 p: nothing to undo"
    monkeypatch.setenv("CKPTDOCTOR_DEBUG", "1")
    with pytest.raises(ValueError):
        _report(ValueError("boom"))
    assert [row[0] for row in ERRORS][0] is CkptdoctorError and ERRORS[-1][0] is Exception


def test_docs_error_table_is_the_codes_table():
    from ckptdoctor.cli import error_table

    text = (ROOT / "docs" / "security.md").read_text()
    start = text.index("<!-- errors:start")
    start = text.index("\n", start) + 1
    assert text[start:text.index("<!-- errors:end -->")].strip() == error_table()
    table = re.findall(r"^\| \**(\d+)\** \|", text.split("## Exit codes")[1].split("###")[0],
                       re.M)
    assert sorted(int(c) for c in table) == sorted(int(c) for c in ExitCode)
    for cls in errors.hierarchy():  # each class's exit code and code appear in its row
        row = next(ln for ln in error_table().splitlines() if ln.startswith(f"| `{cls.__name__}`"))
        assert f"| {int(cls.exit_code)} |" in row
        assert cls.code is None or cls.code.value in row


def test_typer_usage_errors_inside_a_command_stay_typer_usage_errors(tmp_path):
    """A bad option value is reported by typer (exit 2, 'Invalid value'), never turned into an
    internal error by the table: typer's exceptions pass through it."""
    r = _in_process("validate", "--format", "xml", make_torch_zip(tmp_path))
    assert r.exit_code == 2 and "Invalid value for '--format'" in r.output, r.output
    assert "internal error" not in r.output


@pytest.mark.skipif(not shutil.which("setpriv") and os.geteuid() == 0,
                    reason="root reads chmod-000 files unless setpriv drops the override")
def test_an_unreadable_source_shard_is_a_read_error_not_could_not_write(tmp_path):
    """A shard that cannot be read is CK002, not CK710 "could not write" (the OSError row
    used to call every OSError a write failure). Real EACCES: the CLI runs without
    CAP_DAC_OVERRIDE when it is root."""
    from tests.fixtures.factory import make_hf_model

    src = make_hf_model(tmp_path / "src", sharded=True, safe=True)
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.chmod(0)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] \
        if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CKPTDOCTOR_DEBUG", None)
    for args in (["convert", src, tmp_path / "out", "--to", "torch"], ["diff", src, src]):
        proc = subprocess.run([*drop, sys.executable, "-m", "ckptdoctor", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"ckptdoctor: error: CK002 {shard}"), lines[0]
    assert not (tmp_path / "out").exists()
