"""Tests written against mutations the suite once let through (issue 11, section 2).

Each test names the mutation it catches; each was checked by applying that mutation by hand and
seeing the test fail. They drive the product through the CLI (JSON output, finding codes, exit
codes, bytes on disk) so they survive rewrites of the code behind it. Checkpoints are written by
torch / safetensors / transformers; the two hand-built files say why in a comment."""

from __future__ import annotations

import hashlib
import json
import os
import pickle  # for UnpicklingError only; nothing is unpickled with it
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ckptdoctor.cli import app

try:
    from tests.fixtures import factory as F
    from tests.oracle import assert_same
except ImportError:  # pytest's rootdir-relative import mode
    from fixtures import factory as F
    from oracle import assert_same

ROOT = Path(__file__).resolve().parents[1]
NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def validate(path, *args):
    """(exit code, {(code, path)}, [finding dicts]) of `validate --format json`."""
    r = cli("validate", "--format", "json", *args, path)
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    return r.exit_code, {(f["code"], f["path"]) for f in doc["findings"]}, doc["findings"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- validate --deep ------------------------------------------------------------------------------
def test_deep_reports_inf_without_nan(tmp_path):
    """Mutation caught: the non-finite check tests isnan only (Inf not detected)."""
    st = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor([1.0, float("inf"), -float("inf"), 2.0])}, st,
              metadata={"format": "pt"})
    pt = tmp_path / "m.pt"
    torch.save({"w": torch.tensor([float("-inf"), 0.0])}, pt)
    for p in (st, pt):
        assert validate(p)[0] == 0  # the static checks read no tensor values
        rc, found, findings = validate(p, "--deep", "--fail-on", "warning")
        assert rc == 1 and ("CK501", p.name) in found, found
        # Inf in a parameter is an error (issue 10: resume would continue from garbage) ...
        assert {f["severity"] for f in findings if f["code"] == "CK501"} == {"error"}
        # ... and a warning when the user accepts non-finite values
        rc, found, findings = validate(p, "--deep", "--allow-nonfinite", "--fail-on", "warning")
        assert {f["severity"] for f in findings if f["code"] == "CK501"} == {"warning"}


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "torch-legacy"])
def test_deep_reports_nan_in_torch_files(tmp_path, zipped):
    """Mutation caught: the NaN check runs for safetensors only, torch files are skipped."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    clean = tmp_path / "clean"
    clean.mkdir()
    torch.save(opt.state_dict(), clean / "optimizer.pt", _use_new_zipfile_serialization=zipped)
    sd = opt.state_dict()
    sd["state"][1]["exp_avg_sq"][0] = float("nan")  # a diverged second moment
    p = tmp_path / "optimizer.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=zipped)
    assert not any(c == "CK501" for c, _ in validate(clean / "optimizer.pt", "--deep")[1])
    rc, found, findings = validate(p, "--deep", "--fail-on", "warning")
    assert rc == 1 and ("CK501", "optimizer.pt") in found, found
    assert any("exp_avg_sq" in f["message"] for f in findings if f["code"] == "CK501")


def _bias_free(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    """A model whose safetensors names sort in parameter order (0.weight, 1.weight), trained one
    step: weights in model.safetensors, Adam state in optimizer.pt."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False),
                                torch.nn.Linear(3, 5, bias=False))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file(model.state_dict(), d / "model.safetensors", metadata={"format": "pt"})
    torch.save(opt.state_dict(), d / "optimizer.pt")
    return d, model, opt


def test_deep_optimizer_shape_check(tmp_path):
    """Mutation caught: the CK502 optimizer-shape check turned off."""
    d, _, opt = _bias_free(tmp_path)
    rc, found, _ = validate(d, "--deep")
    assert not any(c == "CK502" for c, _ in found), found
    # 1. the optimizer of another model (both moments consistently the wrong shape)
    sd = opt.state_dict()
    sd["state"][0] = {k: (torch.zeros(3, 5) if k.startswith("exp_avg") else v)
                      for k, v in sd["state"][0].items()}
    torch.save(sd, d / "optimizer.pt")
    rc, found, _ = validate(d, "--deep")
    assert rc == 1 and ("CK502", "optimizer.pt") in found, found
    # 2. the moments of one parameter disagree with each other
    sd = opt.state_dict()
    sd["state"][1]["exp_avg"] = torch.zeros(3, 5)  # exp_avg_sq stays [5, 3]
    torch.save(sd, d / "optimizer.pt")
    rc, found, _ = validate(d, "--deep")
    assert rc == 1 and ("CK502", "optimizer.pt") in found, found


def test_deep_optimizer_shape_check_clean_linear_with_bias(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_file(model.state_dict(), tmp_path / "model.safetensors", metadata={"format": "pt"})
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    assert not any(c == "CK502" for c, _ in validate(tmp_path, "--deep")[1])


# --- format checks --------------------------------------------------------------------------------
def test_safetensors_gap_between_tensors(tmp_path):
    """Mutation caught: a gap between two tensors' data is not reported.
    Hand-built: no library writes a safetensors file with a gap (safetensors itself refuses to
    read one, asserted below as the independent check)."""
    from safetensors import safe_open

    header = json.dumps({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},  # bytes 8..16 unused
    }).encode()
    p = tmp_path / "gap.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(24))
    with pytest.raises(Exception, match="offset"), safe_open(str(p), framework="pt") as fh:
        fh.get_tensor("b")
    rc, found, findings = validate(p)
    assert rc == 1 and ("CK304", "gap.safetensors") in found, found
    assert any("gap" in f["message"] for f in findings if f["code"] == "CK304")


def test_zip_storage_record_shorter_than_its_tensor(tmp_path):
    """Mutation caught: a storage record shorter than the tensor viewing it (CK203) is not
    reported. torch.save writes the file; the record is then cut by rewriting the archive with
    zipfile (no library writes a short record), which torch.load refuses."""
    src = tmp_path / "src.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, src)
    p = tmp_path / "short.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data/0"):
                data = data[: len(data) // 2]
            zout.writestr(info.filename, data)
    with pytest.raises(RuntimeError):  # torch: PytorchStreamReader failed reading file
        torch.load(p, weights_only=True)
    assert validate(src)[0] == 0
    rc, found, _ = validate(p)
    assert rc == 1 and ("CK203", "short.pt") in found, found


def test_manifest_names_a_missing_file(tmp_path):
    """Mutation caught: a file recorded in the manifest and since deleted (CK504) not reported."""
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file({"w": torch.ones(2, 2)}, d / "model.safetensors", metadata={"format": "pt"})
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, d / "optimizer.pt")
    assert cli("validate", "--write-manifest", d).exit_code == 0
    recorded = json.loads((d / ".ckptdoctor-manifest.json").read_text())
    assert "optimizer.pt" in json.dumps(recorded)
    assert validate(d)[0] == 0
    (d / "optimizer.pt").unlink()
    rc, found, _ = validate(d)
    assert rc == 1 and ("CK504", "optimizer.pt") in found, found


# --- steps: hf-trainer and latest -----------------------------------------------------------------
@pytest.fixture(scope="module")
def run10(tmp_path_factory):
    """A real Trainer run saving checkpoint-5 and checkpoint-10."""
    return F.make_hf_trainer_run(tmp_path_factory.mktemp("run10") / "out", steps=10, save_steps=5)


def test_hf_trainer_step_comes_from_trainer_state(run10, tmp_path):
    """Mutation caught: hf-trainer reports the directory name's step over
    trainer_state.global_step."""
    state = json.loads((run10 / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10  # what transformers itself wrote
    ck = tmp_path / "checkpoint-7"  # renamed by hand (e.g. a copy script)
    shutil.copytree(run10 / "checkpoint-10", ck)
    doc = json.loads(cli("inspect", "--json", ck).stdout)
    assert doc["layout"]["name"] == "hf-trainer" and doc["layout"]["step"] == 10
    rc, found, findings = validate(ck)
    assert rc == 1 and any(c == "CK404" for c, _ in found)
    f = next(f for f in findings if f["code"] == "CK404")
    assert f["detail"]["global_step"] == 10 and f["detail"]["dir_step"] == 7


def test_latest_orders_by_step_not_by_path(run10, tmp_path):
    """Mutation caught: `latest` sorts candidates by path ("checkpoint-5" > "checkpoint-10")."""
    assert sorted(p.name for p in run10.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-10", "checkpoint-5"]
    proc = subprocess.run([sys.executable, "-m", "ckptdoctor", "latest", str(run10)],
                          capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run10 / "checkpoint-10")


# --- loaders --------------------------------------------------------------------------------------
def test_safe_load_does_not_trust_by_default(tmp_path, monkeypatch):
    """Mutation caught: safe_load(trust=...) defaults to True, so a file whose pickle names an
    arbitrary (not code-executing) class is unpickled with weights_only=False."""
    from ckptdoctor.loaders import LoadError, safe_load

    mod = tmp_path / "ckpt_regress_mod.py"
    mod.write_text(textwrap.dedent("""
        class Config:
            def __init__(self, lr):
                self.lr = lr
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckpt_regress_mod

    p = tmp_path / "args.bin"
    torch.save({"cfg": ckpt_regress_mod.Config(0.5), "w": torch.ones(2)}, p)
    with pytest.raises(LoadError):
        safe_load(p)
    with pytest.raises(LoadError):  # --trust alone admits no unknown name (issue 9)
        safe_load(p, trust=True)
    # opting in, trust plus the vouched name, still works: so the refusal above is the default
    got = safe_load(p, trust=True, allow=["ckpt_regress_mod.Config"])
    assert type(got["cfg"]).__name__ == "Config" and got["cfg"].lr == 0.5


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "torch-legacy"])
def test_safe_load_reads_zip_and_legacy_files_with_and_without_mmap(tmp_path, zipped):
    """safe_load reads both torch formats, mmap on and off, to the object torch.save was given
    (checked by the oracle). Written for the mutate.py survivor `ctx.mmap or fmt in ...` in
    loaders.py, which it does NOT catch: torch 2.13 reads these either way (equivalent)."""
    from ckptdoctor.loaders import safe_load

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    want = {"model": model.state_dict(), "step": 7}
    p = tmp_path / "ckpt.pt"
    torch.save(want, p, _use_new_zipfile_serialization=zipped)
    for mmap in (True, False):
        assert_same(want, safe_load(p, mmap=mmap))


def test_validate_library_does_not_trust_by_default(tmp_path, monkeypatch):
    """Mutation caught (tools/mutate.py survivor, validate.py): ValidateOptions.trust defaulting
    to True, so a library caller's `--load` unpickles with the (vetted) trusted strategy. The
    file needs it: a protocol-4 pickle, which torch's weights-only unpickler rejects even with
    the class allow-listed."""
    from ckptdoctor.validate import ValidateOptions, validate as run

    (tmp_path / "ckpt_trust_mod.py").write_text(
        "class Config:\n    def __init__(self, lr):\n        self.lr = lr\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckpt_trust_mod

    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"cfg": ckpt_trust_mod.Config(0.5)}, d / "args.bin", pickle_protocol=4)
    allow = ("ckpt_trust_mod.Config",)

    def loaded_trusted(findings) -> bool:
        return any(f.path == "args.bin" and "trusted" in f.message for f in findings)

    _, findings = run(d, ValidateOptions(load=True, consumer="torch", allow=allow))
    assert not loaded_trusted(findings), [(f.code, f.message) for f in findings]
    assert ("CK601", "args.bin") in {(f.code, f.path) for f in findings}
    _, findings = run(d, ValidateOptions(load=True, consumer="torch", trust=True, allow=allow))
    assert loaded_trusted(findings)  # opting in works, so the default above is what refused


_NO_TORCH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ckptdoctor.validate import validate
    from ckptdoctor.latest import newest_valid
    root = Path(sys.argv[1])
    validate(root / "checkpoint-10")
    newest_valid(root)
    print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH")
""")


def test_library_validate_defaults_are_static(run10):
    """Mutations caught (tools/mutate.py survivors, validate.py): ValidateOptions.load, .deep
    or .write_manifest defaulting to True. The library defaults, which `latest` uses, are the
    static checks: they never import torch and write nothing."""
    before = tree_hashes(run10)
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(run10)], capture_output=True,
                          text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "NO_TORCH", proc.stdout + proc.stderr
    assert tree_hashes(run10) == before  # and write nothing (no manifest unless asked)


_SWAP = textwrap.dedent("""
    # safe_load(trust=True) while another process swaps the file: an audit hook replaces the
    # file the first time torch itself opens it, i.e. after ckptdoctor's static scan vouched
    # for the original and before the trusted (weights_only=False) attempt.
    import os, sys
    target, payload, moddir = sys.argv[1:4]
    sys.path.insert(0, moddir)
    done = []

    def hook(event, args):
        if done or event != "open" or not args or not isinstance(args[0], (str, bytes)):
            return
        if os.path.realpath(os.fsdecode(args[0])) != os.path.realpath(target):
            return
        f = sys._getframe(1)
        while f is not None:
            if f.f_code.co_filename.endswith(os.path.join("torch", "serialization.py")):
                done.append(1)
                os.replace(payload, target)
                return
            f = f.f_back

    sys.addaudithook(hook)
    from ckptdoctor.loaders import LoadError, safe_load
    try:
        safe_load(target, trust=True)
        print("LOADED", bool(done))
    except LoadError as exc:
        print("REFUSED", bool(done), [(a.strategy, a.outcome, a.error) for a in exc.attempts])
""")


def test_trusted_load_refuses_a_file_swapped_after_its_scan(tmp_path):
    """Mutation caught (tools/mutate.py survivor, loaders.py): the trusted strategy's "file
    changed since it was scanned" check dropped. The swapped-in file's payload would then run
    under weights_only=False, vouched for by the scan of the file it replaced."""
    mod = tmp_path / "ckpt_swap_mod.py"
    mod.write_text("class Config:\n    def __init__(self, lr):\n        self.lr = lr\n")
    canary = tmp_path / "CANARY"
    code = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        import ckpt_swap_mod

        class Payload:
            def __reduce__(self):
                return (os.system, ("touch {canary}",))

        torch.save({{"cfg": ckpt_swap_mod.Config(0.5)}}, {str(tmp_path / "args.bin")!r})
        torch.save({{"cfg": Payload()}}, {str(tmp_path / "payload.bin")!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=env())
    proc = subprocess.run([sys.executable, "-c", _SWAP, str(tmp_path / "args.bin"),
                           str(tmp_path / "payload.bin"), str(tmp_path)],
                          capture_output=True, text=True, env=env())
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not canary.exists(), "the swapped-in payload ran"
    assert proc.stdout.startswith("REFUSED True"), proc.stdout + proc.stderr
    assert "('trusted', 'refused'" in proc.stdout and "changed" in proc.stdout, proc.stdout


# --- repair through the CLI -----------------------------------------------------------------------
def _numpy1_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ck"
    d.mkdir()
    shutil.copy2(NUMPY1 / "rng_state.pth", d / "rng_state.pth")  # written by numpy 1.x + torch
    return d


def test_cli_repair_dry_run_writes_nothing(tmp_path):
    """Mutation caught: `repair --dry-run` rewrites files (the flag ignored by the CLI)."""
    d = _numpy1_dir(tmp_path)
    before = tree_hashes(d)
    r = cli("repair", "--dry-run", "--consumer", "torch", d)
    assert r.exit_code in (0, 1), r.output
    assert "rng_state.pth" in r.output
    assert tree_hashes(d) == before and sorted(os.listdir(d)) == ["rng_state.pth"]
    with pytest.raises(pickle.UnpicklingError):  # still the file plain torch cannot load
        torch.load(d / "rng_state.pth", weights_only=True)
    # and without --dry-run the same command does rewrite it (so the flag is what held it back)
    r = cli("repair", "--yes", "--consumer", "torch", d)
    assert r.exit_code == 0, r.output
    assert sha(d / "rng_state.pth") != before["rng_state.pth"]
    torch.load(d / "rng_state.pth", weights_only=True)


_RACE = textwrap.dedent("""
    # Run `ckptdoctor repair` while another process "changes the file": an audit hook appends
    # to the original the first time repair opens any other file in the checkpoint for writing
    # (its staged copy), i.e. after the original was read and before it is replaced.
    import os, sys
    target = os.path.realpath(sys.argv[1])
    state = {"done": False}

    def hook(event, args):
        if state["done"] or event != "open" or not args or not isinstance(args[0], (str, bytes)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
        writing = (isinstance(mode, str) and any(c in mode for c in "wa+x")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if writing and path != target and path.startswith(os.path.dirname(target)):
            state["done"] = True
            with open(target, "ab") as fh:
                fh.write(b"CONCURRENT")

    sys.addaudithook(hook)
    sys.argv = ["ckptdoctor", "repair", "--yes", "--consumer", "torch", sys.argv[1]]
    from ckptdoctor.cli import main
    main()
""")


def test_repair_refuses_when_the_file_changes_while_repairing(tmp_path):
    """Mutation caught: repair's "file changed while repairing" guard off: the concurrent
    writer's bytes are overwritten by the repaired copy."""
    d = _numpy1_dir(tmp_path)
    target = d / "rng_state.pth"
    original = target.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _RACE, str(target)], capture_output=True,
                          text=True, env=env())
    assert "Traceback" not in proc.stderr, proc.stderr
    assert target.read_bytes() == original + b"CONCURRENT"  # the other writer's change survives
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "CK701" in proc.stdout + proc.stderr and "changed" in proc.stdout + proc.stderr


# --- convert through the CLI ----------------------------------------------------------------------
def test_cli_convert_refuses_existing_dst_without_overwrite(tmp_path):
    """Mutation caught: convert's --overwrite on by default (an existing DST replaced)."""
    torch.manual_seed(0)
    sd = torch.nn.Linear(3, 2).state_dict()
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    dst = tmp_path / "model.safetensors"
    save_file({"other": torch.zeros(1)}, dst)
    before = sha(dst)
    r = cli("convert", src, dst, "--to", "safetensors")
    assert r.exit_code != 0 and sha(dst) == before
    assert "Traceback" not in r.output
    r = cli("convert", src, dst, "--to", "safetensors", "--overwrite")
    assert r.exit_code == 0, r.output
    assert_same(dict(sorted(sd.items())), dict(sorted(load_file(dst).items())))


def test_cli_convert_verifies_by_default(tmp_path):
    """Mutation caught: convert's verification off by default (--no-verify assumed)."""
    torch.manual_seed(0)
    sd = torch.nn.Linear(3, 2).state_dict()
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    r = cli("convert", src, tmp_path / "a.safetensors", "--to", "safetensors")
    assert r.exit_code == 0, r.output
    assert "verified bit-identical" in r.output and "NOT verified" not in r.output
    r = cli("convert", src, tmp_path / "b.safetensors", "--to", "safetensors", "--no-verify")
    assert r.exit_code == 0, r.output
    assert "NOT verified" in r.output
    from ckptdoctor.convert import convert

    assert convert(src, tmp_path / "c.safetensors", "safetensors").verified
