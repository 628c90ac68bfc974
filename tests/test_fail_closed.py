"""Issue 9 (fail closed), the policy half: one vet() gate, --trust as a vetted unpickler,
repair writing only what it derived, sandboxed loads, torch version facts, and the repair CLI.

Every hole is a file or a planted input whose payload writes a canary. Each payload is first
shown to be live (it creates its canary when a victim runs it, in a throw-away subprocess or
by an independent path check), then ckptdoctor is run on it and the canary must never appear.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import payloads as P
from hostile.gadgets import Asker, Exiter

import ckptdoctor
from ckptdoctor.loaders import (
    STRATEGIES,
    LoadContext,
    LoadError,
    RefusedGlobal,
    load_with_chain,
    safe_load,
    sandboxed,
    vetted_pickle_module,
)
from ckptdoctor.pickles import policy
from ckptdoctor.pickles.policy import AllowListError, DangerousGlobalError, Verdict, vet
from ckptdoctor.repair import repair
from ckptdoctor.repair.allowlist import ALLOWLIST_FILE, MODULE_TEXT, SNIPPET_FILE

ROOT = Path(__file__).resolve().parents[1]
NUMPY1 = ROOT / "tests" / "fixtures" / "numpy1"
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
       "COLUMNS": "200"}
ENV.pop("CKPTDOCTOR_DEBUG", None)


def _cli(*args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ckptdoctor", *map(str, args)], capture_output=True,
                          text=True, env=ENV, stdin=stdin, timeout=600)


def _live(data: bytes, canary: Path, setup: str = "") -> None:
    """The payload creates its canary under plain pickle.load (subprocess); then clean up."""
    script = textwrap.dedent("""
        import io, pickle, sys
        exec(sys.argv[2], {})
        try:
            pickle.load(io.BytesIO(open(sys.argv[1], 'rb').read()))
        except BaseException:
            pass
    """)
    f = canary.with_suffix(".live")
    f.write_bytes(data)
    subprocess.run([PY, "-c", script, str(f), setup], env=ENV, timeout=120,
                   capture_output=True, stdin=subprocess.DEVNULL)
    assert canary.exists(), f"dud payload: {canary.name} not created by pickle.load"
    canary.unlink()
    f.unlink()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- 1. one gate: vet() ----------------------------------------------------------------------
ISSUE_NAMES = [
    "enum.bltns.list", "enum.bltns.map", "enum.bltns.globals", "enum.bltns.dict.get",
    "enum.bltns.exit", "enum.bltns.input", "enum.bltns.exec",
    "torch.distributed.checkpoint.metadata.torch._utils._import_dotted_name",
    "typing._eval_type", "typing.ForwardRef", "imaplib.IMAP4_stream", "mailcap.findmatch",
    "logging.FileHandler", "pathlib.PosixPath.write_text", "logging.os", "pathlib._local.os",
    "transformers.training_args.os", "numpy.dtypes.np", "argparse._os",
    "test.support.script_helper.assert_python_ok", "torch._dynamo.config.load_config",
    "torch._inductor.config.load_config", "torch.utils._config_module.ConfigModule.load_config",
]


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_dangerous_names_are_refused_even_when_named(name):
    assert vet(name).verdict is Verdict.DANGEROUS
    assert vet(name, allow=[name]).verdict is Verdict.DANGEROUS
    with pytest.raises(DangerousGlobalError):
        policy.require([name], allow=[name])


@pytest.mark.parametrize("name", ["typing._eval_type", "pathlib.PosixPath.write_text",
                                  "enum.bltns.list"])
def test_cli_allow_of_a_dangerous_name_is_refused(name, tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "m.pt")
    r = _cli("validate", tmp_path, "--load", "--trust", "--allow", name)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "CK101" in r.stderr and name in r.stderr


@pytest.mark.parametrize("name", [
    "transformers.training_args.Anything", "omegaconf.nodes.Anything", "enum.Enum",
    "torch.distributed.checkpoint.metadata.Anything", "numpy.dtypes.Anything",
    "accelerate.utils.dataclasses.Anything", "megatron.core.rerun_state_machine.Anything",
])
def test_data_is_an_exact_name_never_a_module_prefix(name):
    """Names under the old DATA_PREFIXES are no longer data; they need --allow."""
    assert vet(name).verdict is not Verdict.DATA and not vet(name).allowed


def test_the_names_real_libraries_write_are_reviewed_data():
    """Independent of ckptdoctor's scanner: torch's own get_unsafe_globals_in_checkpoint on
    files real libraries wrote (numpy-1 HF Trainer / accelerate fixtures, a numpy-2 rng state,
    a DCP checkpoint's .metadata names) -> every name passes vet() without --allow, except
    accelerate's PartialState (a process-state singleton, deliberately not data)."""
    found = set()
    for f in ("rng_state.pth", "training_args.bin", "numpy_scalars.pt"):
        found |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(NUMPY1 / f)))
    assert found, "fixtures hold no non-default globals?"
    refused = sorted(n for n in found if not vet(n).allowed)
    assert refused == ["accelerate.state.PartialState"]


def test_the_dcp_metadata_names_dcp_writes_are_reviewed_data(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(2), "b": io.BytesIO(b"x")}, checkpoint_id=str(tmp_path / "ck"),
             no_dist=True)
    meta = (tmp_path / "ck" / ".metadata").read_bytes()
    import pickletools

    # an independent reader (pickletools + a memo), not ckptdoctor's scanner
    names, memo, pushed = set(), {}, []
    ops = list(pickletools.genops(meta))
    strings = [a for op, a, _ in ops if isinstance(a, str)]
    for op, arg, _ in ops:
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            names.add(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo[arg])
        elif op.name.endswith("UNICODE") or op.name.endswith("STRING"):
            pushed.append(arg)
        elif op.name not in ("PROTO", "FRAME", "STOP"):
            pushed.append(None)
    assert strings and names
    assert sorted(n for n in names if not vet(n).allowed) == []


# --- 2. --trust: a vetted unpickler ----------------------------------------------------------
def _gzip_payload(canary: str) -> bytes:
    """gzip.GzipFile(canary, 'wb') creates the file: a stdlib callable no deny-list named, the
    kind --trust and --allow used to admit."""
    return (P.PROTO(2) + P.GLOBAL("gzip", "GzipFile") + P.USTR(canary) + P.USTR("wb") + P.TUPLE2
            + P.REDUCE + P.STOP)


@pytest.mark.parametrize("container", ["plain", "torch_zip"])
def test_unreviewed_stdlib_gadgets_are_refused_even_when_named(tmp_path, container):
    """The standard library is resolved only where a name was reviewed as data: gzip.GzipFile
    (and bz2/lzma/wave writers, found by the red-team review) is dangerous, so neither --trust
    nor --allow admits it. (--trust alone never admits an unknown third-party name either:
    tests/test_regressions.py::test_safe_load_does_not_trust_by_default.)"""
    canary = tmp_path / "canary_gzip"
    data = _gzip_payload(str(canary))
    _live(data, canary)
    for name in ("gzip.GzipFile", "bz2.BZ2File", "lzma.LZMAFile", "wave.open"):
        assert vet(name, allow=[name]).verdict is Verdict.DANGEROUS, name
    f = tmp_path / "ck.pt"
    f.write_bytes(data if container == "plain" else P.torch_zip_bytes(data))
    for kw in ({"trust": True}, {"trust": True, "allow": ["gzip.GzipFile"]}):
        with pytest.raises((LoadError, AllowListError)):
            safe_load(f, **kw)
    r = _cli("validate", f, "--load", "--trust", "--allow", "gzip.GzipFile", "--format", "json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert not canary.exists()


def test_torch_config_loader_gadget_is_refused_even_when_named(tmp_path):
    """torch._dynamo.config.load_config(bytes) unpickles its argument with plain pickle."""
    canary = tmp_path / "canary_cfg"
    inner = P.PAYLOADS["posix_system_p2"].build(str(canary))
    data = (P.PROTO(2) + P.GLOBAL("torch._dynamo.config", "load_config")
            + P.SHORT_BINBYTES(inner) + P.TUPLE1 + P.REDUCE + P.STOP)
    _live(data, canary, setup="import torch._dynamo.config\n")
    f = tmp_path / "cfg.pt"
    f.write_bytes(P.torch_zip_bytes(data))
    name = "torch._dynamo.config.load_config"
    with pytest.raises((LoadError, DangerousGlobalError)):
        safe_load(f, trust=True, allow=(name,))
    r = _cli("validate", tmp_path, "--load", "--trust", "--allow", name)
    assert r.returncode == 1 and "CK101" in r.stderr
    assert not canary.exists()


def test_the_vetted_unpickler_refuses_at_find_class(tmp_path):
    """Even a file the static scan never saw: find_class itself vets."""
    canary = tmp_path / "canary_fc"
    mod = vetted_pickle_module()
    with pytest.raises(RefusedGlobal, match="gzip.GzipFile"):
        mod.loads(_gzip_payload(str(canary)))
    for name in ("enum_bltns_open_p4", "dcp_metadata_torch_gadget", "typing_eval_type"):
        with pytest.raises(RefusedGlobal):
            mod.loads(P.PAYLOADS[name].build(str(canary)))
    with pytest.raises(RefusedGlobal):  # even a vouched name cannot reach a module attribute
        vetted_pickle_module(allow=("enum.bltns",)).loads(
            P.PROTO(4) + P.GLOBAL("enum", "bltns") + P.STOP)
    assert not canary.exists()


def test_trusted_strategy_keeps_torch_storage_handling(tmp_path):
    """A protocol-4 torch file (weights_only cannot read it) with numpy data loads through
    torch.load(weights_only=False, pickle_module=<vetted>): tensors and arrays intact."""
    f = tmp_path / "p4.pt"
    obj = {"w": torch.arange(6.0).reshape(2, 3), "rng": np.arange(4, dtype=np.uint32)}
    torch.save(obj, f, pickle_protocol=4)
    res = load_with_chain(f, trust=True)
    assert res.strategy == "trusted"
    assert torch.equal(res.obj["w"], obj["w"]) and np.array_equal(res.obj["rng"], obj["rng"])


@pytest.mark.parametrize("payload", ["enum_bltns_open_p4", "enum_bltns_chain_p4",
                                     "dcp_metadata_torch_gadget", "typing_eval_type",
                                     "logging_file_handler", "pathlib_write_text"])
def test_issue_payloads_never_run_with_or_without_trust(tmp_path, payload):
    pl = P.PAYLOADS[payload]
    canary = tmp_path / f"canary_{payload}"
    _live(pl.build(str(canary)), canary, pl.setup)
    f = tmp_path / "ck" / "model.pt"
    f.parent.mkdir()
    f.write_bytes(P.torch_zip_bytes(pl.build(str(canary))))
    for trust in (False, True):
        with pytest.raises((LoadError, DangerousGlobalError)):
            safe_load(f, trust=trust)
    r = _cli("validate", f.parent, "--load")
    assert r.returncode == 1 and "CK101" in r.stdout
    r = _cli("convert", f, tmp_path / "out.safetensors", "--to", "safetensors", "--trust")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    before = _sha(f)
    r = _cli("repair", f.parent, "--yes", "--consumer", "torch")
    assert r.returncode == 1 and "allowlisted" not in r.stdout and _sha(f) == before
    assert not (f.parent / ALLOWLIST_FILE).exists()
    assert not canary.exists()


def test_a_file_that_is_not_loadable_is_refused_by_every_strategy(tmp_path):
    """FileInfo.loadable is the shared rule: a scan that is not complete refuses them all."""
    import dataclasses

    from ckptdoctor.formats import detect_file
    from ckptdoctor.model import ScanState

    f = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, f)
    info = dataclasses.replace(detect_file(f, "m.pt"), scan_state=ScanState.INCONCLUSIVE)
    ctx = LoadContext(("x.Y",), True, "cpu", False, info, f.stat())
    for strategy in STRATEGIES:
        assert strategy.attempt(f, ctx).outcome == "refused", strategy.name
    with pytest.raises(LoadError, match="inconclusive"):
        load_with_chain(f, trust=True, static=info)


# --- 4. sandboxed loads -----------------------------------------------------------------------
def _save_gadget(cls, path: Path) -> Path:
    g = cls()
    g.v = 1  # a BUILD state, so the restore calls __setstate__
    torch.save({"g": g}, path)
    return path


def test_system_exit_from_a_load_is_a_finding_and_siblings_are_kept(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    _save_gadget(Exiter, d / "exit.pt")
    canary = tmp_path / "canary_sibling"
    (d / "evil.pt").write_bytes(P.torch_zip_bytes(P.PAYLOADS["posix_system_p2"].build(str(canary))))
    name = "hostile.gadgets.Exiter"
    # live: unsandboxed, the same load raises SystemExit
    with torch.serialization.safe_globals([(Exiter, name)]), pytest.raises(SystemExit):
        torch.load(d / "exit.pt", weights_only=True)
    r = _cli("validate", d, "--load", "--consumer", "torch", "--allow", name, "--format", "json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    codes = {(f["code"], f["path"]) for f in doc["findings"]}
    assert ("CK101", "evil.pt") in codes
    exit_findings = [f for f in doc["findings"] if f["path"] == "exit.pt" and f["code"] == "CK601"]
    assert exit_findings and "SystemExit" in json.dumps(exit_findings)
    assert not canary.exists()


def test_no_loader_reads_stdin(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    _save_gadget(Asker, d / "ask.pt")
    name = "hostile.gadgets.Asker"
    with sandboxed(), pytest.raises(EOFError):
        input()
    proc = subprocess.Popen([PY, "-m", "ckptdoctor", "validate", str(d), "--load", "--consumer",
                             "torch", "--allow", name, "--format", "json"], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdin.write("secret answer\n")  # a pipe with data, left open: never read
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=600)
    doc = json.loads(out)
    ask = [f for f in doc["findings"] if f["path"] == "ask.pt"]
    # input() hit end-of-file (/dev/null), so the load failed instead of reading the pipe
    assert any(f.get("detail", {}).get("error_type") == "EOFError" for f in ask), ask
    assert not any(f["code"] in ("CK602", "CK603") for f in ask)


# --- 3. repair writes only what it derived ---------------------------------------------------
INJECT_TMPL = "os import sep; import os as o; o.system('touch {c}'); from os.path"


@pytest.fixture()
def phase_module():
    mod = types.ModuleType("ckpt_fc_enums")

    class Phase(enum.Enum):
        TRAIN = 1

    Phase.__module__ = mod.__name__
    Phase.__qualname__ = "Phase"
    mod.Phase = Phase
    sys.modules[mod.__name__] = mod
    yield mod
    sys.modules.pop(mod.__name__, None)
    torch.serialization.clear_safe_globals()


def test_planted_allowlist_is_never_authority(tmp_path, phase_module):
    canary = tmp_path / "canary_inject"
    inject = INJECT_TMPL.format(c=canary)
    # live: the import line the old generator wrote for this name runs a shell
    module, _, qual = inject.rpartition(".")
    subprocess.run([PY, "-c", f"from {module} import {qual}"], env=ENV, timeout=60)
    assert canary.exists()
    canary.unlink()

    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"p": phase_module.Phase.TRAIN, "w": torch.ones(1)}, d / "u.pt")
    torch.save({"w": torch.ones(1)}, d / "v.pt")  # a clean file the planted entry names
    planted = ["builtins.exec", inject]
    (d / ALLOWLIST_FILE).write_text(json.dumps({
        "version": 1, "allowlist": planted,
        "files": {"u.pt": {"allowlist": planted, "sha256": _sha(d / "u.pt")},
                  "v.pt": {"allowlist": planted, "sha256": _sha(d / "v.pt")},
                  "../outside.pt": {"allowlist": ["builtins.eval"], "sha256": "0"}}}))
    result = repair(d, consumer="torch", allow=["ckpt_fc_enums.Phase"])
    assert result.exit_code == 0 and result.outcomes[0].status == "allowlisted"
    doc = json.loads((d / ALLOWLIST_FILE).read_text())
    assert doc["allowlist"] == ["ckpt_fc_enums.Phase"]
    assert set(doc["files"]) == {"u.pt"}
    assert (d / SNIPPET_FILE).read_text() == MODULE_TEXT  # fixed text, no name in it
    assert "exec" not in (d / SNIPPET_FILE).read_text().replace("exec_", "")
    from ckptdoctor.repair.safe_globals import register

    register(d / ALLOWLIST_FILE, allow=["ckpt_fc_enums.Phase"])
    assert torch.load(d / "u.pt", weights_only=True)["p"] is phase_module.Phase.TRAIN
    # a planted JSON beside the fixed module: register refuses, nothing runs
    (d / ALLOWLIST_FILE).write_text(json.dumps({"allowlist": planted}))
    with pytest.raises(DangerousGlobalError):
        exec((d / SNIPPET_FILE).read_text(), {"__file__": str(d / SNIPPET_FILE)})
    assert not canary.exists()


def _plant_session(root: Path, files: list[dict], created: list[dict]) -> Path:
    s = root / ".ckptdoctor-backup" / "99991231T235959.999999Z"
    s.mkdir(parents=True)
    (s / "manifest.json").write_text(json.dumps({
        "version": 1, "root": "/", "files": files, "created": created, "complete": True,
        "undone": False}))
    return s


def test_undo_refuses_manifest_paths_outside_the_tree(tmp_path):
    root = tmp_path / "a" / "b" / "ck"
    root.mkdir(parents=True)
    (root / "model.pt").write_bytes(b"original")
    victim = tmp_path / "a" / "victim.txt"
    victim.write_text("keep me")
    escape = "x/y/../../../../planted.txt"
    s = _plant_session(root, [], [])
    (s / "x" / "y").mkdir(parents=True)
    (root / "x" / "y").mkdir(parents=True)
    payload = b"attacker bytes"
    (root / "planted.txt").write_bytes(payload)  # what s/x/y/../../../../planted.txt reads
    outside = Path(os.path.normpath(root / escape))
    assert root not in outside.parents  # live: the path really leaves the checkpoint
    absolute = tmp_path / "abs_target.txt"
    (s / "manifest.json").write_text(json.dumps({
        "version": 1, "root": "/", "complete": True, "undone": False,
        "files": [{"rel": escape, "sha256": hashlib.sha256(payload).hexdigest()}],
        "created": [{"rel": "../../victim.txt", "for": ""}]}))
    r = _cli("repair", "--undo", root)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "CK701" in r.stderr
    assert not outside.exists() and victim.read_text() == "keep me"
    (s / "manifest.json").write_text(json.dumps({
        "version": 1, "root": "/", "complete": True, "undone": False,
        "files": [{"rel": str(absolute), "sha256": hashlib.sha256(payload).hexdigest()}],
        "created": []}))
    r = _cli("repair", "--undo", root)
    assert r.returncode == 1 and not absolute.exists()


def test_undo_never_takes_a_backup_planted_in_a_parent(tmp_path):
    """A session planted in a PARENT's .ckptdoctor-backup (say a shared /tmp) is no authority
    for `repair --undo FILE`: nothing outside the checkpoint is deleted, the file is not
    overwritten, the run refuses in one line. Hand-built manifest: only an attacker writes one."""
    shared = tmp_path / "shared"
    ck = shared / "run1"
    ck.mkdir(parents=True)
    model = ck / "model.pt"
    torch.save({"w": torch.zeros(2)}, model)
    before = _sha(model)
    victim = shared / "someone_else" / "important.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    evil = b"attacker bytes replacing the checkpoint"
    s = _plant_session(shared, [{"rel": "run1/model.pt", "kind": "original", "status": "backed-up",
                                 "sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)}],
                       [{"rel": "someone_else/important.txt", "for": "run1/model.pt"}])
    (s / "run1").mkdir()
    (s / "run1" / "model.pt").write_bytes(evil)
    snapshot = sorted(p for p in tmp_path.rglob("*"))
    r = _cli("repair", "--undo", model)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "CK701" in r.stderr
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1
    assert victim.read_text() == "keep me" and _sha(model) == before
    assert sorted(p for p in tmp_path.rglob("*")) == snapshot  # nothing created or deleted


def _numpy_state_dir(d: Path) -> Path:
    d.mkdir(parents=True)
    torch.save({"numpy": np.random.RandomState(0).get_state()}, d / "rng_state.pth")
    return d


def test_symlinked_backup_dir_is_refused(tmp_path):
    d = _numpy_state_dir(tmp_path / "ck")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (d / ".ckptdoctor-backup").symlink_to(elsewhere)
    before = _sha(d / "rng_state.pth")
    r = _cli("repair", d, "--yes", "--consumer", "torch")
    assert r.returncode == 1 and "symlink" in r.stdout
    assert list(elsewhere.iterdir()) == [] and _sha(d / "rng_state.pth") == before
    r = _cli("repair", "--undo", d)
    assert r.returncode == 1 and list(elsewhere.iterdir()) == []


def test_backup_trees_are_never_repaired_or_undone(tmp_path):
    d = _numpy_state_dir(tmp_path / "ck")
    first = repair(d, consumer="torch")
    assert first.exit_code == 0 and first.backup_dir
    copy = Path(first.backup_dir) / "rng_state.pth"
    before = _sha(copy)
    r = _cli("repair", copy, "--yes", "--consumer", "torch")
    assert r.returncode == 1 and ".ckptdoctor-backup" in r.stdout
    assert _sha(copy) == before
    assert not (copy.parent / ".ckptdoctor-backup").exists()
    r = _cli("repair", "--undo", copy)
    assert r.returncode == 1 and _sha(copy) == before


# --- 6. the repair CLI ------------------------------------------------------------------------
def test_repair_off_a_terminal_without_yes_only_plans(tmp_path):
    d = _numpy_state_dir(tmp_path / "ck")
    before = _sha(d / "rng_state.pth")
    r = _cli("repair", d, "--consumer", "torch")  # stdin is /dev/null: not a terminal
    assert r.returncode == 1 and "add --yes" in r.stderr
    assert _sha(d / "rng_state.pth") == before and not (d / ".ckptdoctor-backup").exists()
    r = _cli("repair", d, "--consumer", "torch", "--yes")
    assert r.returncode == 0 and _sha(d / "rng_state.pth") != before


def test_repair_of_a_file_it_cannot_rewrite_exits_1_naming_the_finding(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "model.pt").write_bytes(b"")
    r = _cli("repair", d, "--yes")
    assert r.returncode == 1 and "CK003" in r.stdout and "model.pt" in r.stdout


def test_repair_has_no_trust_option(tmp_path):
    r = _cli("repair", tmp_path, "--trust")
    assert r.returncode == 2 and "--trust" in r.stderr


# --- 5. torch version facts -------------------------------------------------------------------
def test_weights_only_caveats_by_version():
    assert [c for c, _ in policy.weights_only_caveats("2.5.1+cu121")] == ["CVE-2025-32434",
                                                                          "CVE-2026-24747"]
    assert [c for c, _ in policy.weights_only_caveats("2.9.0")] == ["CVE-2026-24747"]
    assert policy.weights_only_caveats("2.10.0") == []
    assert policy.weights_only_caveats(None) == []


def test_installed_torch_version_is_read_without_importing_torch():
    from importlib import metadata

    code = ("import sys, ckptdoctor.pickles.policy as p; v = p.installed_torch_version(); "
            "assert 'torch' not in sys.modules; print(v)")
    out = subprocess.run([PY, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == metadata.version("torch")


@pytest.mark.parametrize("version,expected", [("2.5.1", {"CVE-2025-32434", "CVE-2026-24747"}),
                                              ("2.9.1", {"CVE-2026-24747"}), ("2.13.0", set())])
def test_every_weights_only_verdict_states_the_installed_torch_cves(tmp_path, monkeypatch,
                                                                     version, expected):
    from ckptdoctor.validate import ValidateOptions, validate

    monkeypatch.setattr(policy, "installed_torch_version", lambda: version)
    torch.save({"numpy": np.arange(3)}, tmp_path / "m.pt")
    _, findings = validate(tmp_path, ValidateOptions(consumer="torch"))
    got = {f.detail.get("cve") for f in findings if f.code == "CK110"}
    assert got == expected
    res = load_with_chain(tmp_path / "m.pt")
    assert {f.detail.get("cve") for f in res.findings if f.code == "CK110"} == expected


# --- 7. safe_load drop-in and allow_for -------------------------------------------------------
def test_safe_load_is_a_drop_in_for_torch_load(tmp_path):
    obj = {"w": torch.arange(4.0), "n": np.arange(3)}
    f = tmp_path / "m.pt"
    torch.save(obj, f)
    buf = io.BytesIO(f.read_bytes())
    for got in (ckptdoctor.safe_load(f, map_location="cpu", weights_only=True, mmap=True),
                ckptdoctor.safe_load(str(f), "cpu", mmap=False, encoding="utf-8"),
                ckptdoctor.safe_load(buf, map_location=torch.device("cpu"))):
        assert torch.equal(got["w"], obj["w"]) and np.array_equal(got["n"], obj["n"])
    assert issubclass(ckptdoctor.LoadError, pickle.UnpicklingError)
    with pytest.raises(pickle.UnpicklingError):
        ckptdoctor.safe_load(f, weights_only=False)  # False only with trust
    p4 = tmp_path / "p4.pt"
    torch.save(obj, p4, pickle_protocol=4)
    got = ckptdoctor.safe_load(p4, weights_only=False, trust=True)
    assert torch.equal(got["w"], obj["w"])
    with pytest.raises(pickle.UnpicklingError):  # code catching torch.load's error catches ours
        ckptdoctor.safe_load(io.BytesIO(P.torch_zip_bytes(_gzip_payload(str(tmp_path / "c")))))
    assert not (tmp_path / "c").exists()


def test_allow_for_registers_only_vetted_names_and_removes_them(tmp_path):
    f = tmp_path / "rng_state.pth"
    shutil.copy(NUMPY1 / "rng_state.pth", f)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(f, weights_only=True)
    before = list(torch.serialization.get_safe_globals())
    with ckptdoctor.allow_for(f) as names:
        assert names and all(vet(n).allowed for n in names)
        state = torch.load(f, weights_only=True)
    assert torch.serialization.get_safe_globals() == before
    assert state["numpy"][0] == "MT19937"
    evil = tmp_path / "evil"
    evil.mkdir()
    canary = tmp_path / "canary_af"
    (evil / "m.pt").write_bytes(
        P.torch_zip_bytes(P.PAYLOADS["enum_bltns_open_p4"].build(str(canary)))
    )
    with pytest.raises(LoadError), ckptdoctor.allow_for(evil):
        pass
    assert not canary.exists()


def test_hf_trainer_resumes_a_numpy1_checkpoint_inside_allow_for(tmp_path):
    """A real HF Trainer checkpoint whose rng_state.pth was written under numpy 1: resume
    fails with plain torch.load(weights_only=True) and works inside allow_for."""
    from tests.fixtures import factory as F

    run = tmp_path / "run"
    F.run_hf_trainer(run, steps=4, save_steps=2, stop_after=2, seed=0)
    ck = run / "checkpoint-2"
    shutil.copy2(NUMPY1 / "rng_state.pth", ck / "rng_state.pth")
    with pytest.raises(pickle.UnpicklingError, match="numpy.core.multiarray"):
        F.run_hf_trainer(run, steps=4, save_steps=2, seed=0, resume_from_checkpoint=ck)
    with ckptdoctor.allow_for(ck):
        resumed = F.run_hf_trainer(run, steps=4, save_steps=2, seed=0, resume_from_checkpoint=ck)
    assert sorted(resumed.losses) == [1, 2, 3, 4]
    fixture = torch.load(ck / "rng_state.pth", weights_only=False,
                         pickle_module=vetted_pickle_module())
    assert fixture["numpy"][0] == "MT19937"


def test_one_gate_decides_resolution():
    """Only policy.py defines the rule; the scanner and diagnose may *describe* a name with
    classify(), nothing else decides with it (resolution goes through vet/require)."""
    import re as _re

    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ckptdoctor").rglob("*.py")
                   if _re.search(r"\bclassify\(", p.read_text("utf-8")))
    assert users == ["ckptdoctor/diagnose.py", "ckptdoctor/pickles/policy.py",
                     "ckptdoctor/pickles/verdict.py"]  # the scan's weights-only bookkeeping
    for p in (ROOT / "ckptdoctor").rglob("*.py"):
        text = p.read_text("utf-8")
        assert "DATA_PREFIXES" not in text and "DCP_GLOBAL_PREFIXES" not in text, p


# --- found by a red-team review after the fixes above ---------------------------------------------
# BUILD on a class object is setattr on shared code: `argparse.Namespace` (reviewed data) with
# BUILD (None, {'dump_patches': True, '__name__': PATH}) arms torch's legacy persistent_load,
# which then appends a diff to PATH + '.patch' (torch/serialization.py _check_container_source).
BUILD_ON_CLASS = (b"\x80\x02cargparse\nNamespace\nq\x00N}q\x01(X\x0c\x00\x00\x00dump_patchesq\x02"
                  b"\x88X\x08\x00\x00\x00__name__q\x03X\x04\x00\x00\x00/nopq\x04u\x86q\x05b.")


def test_build_on_a_class_is_dangerous_statically():
    from ckptdoctor.pickles.scan import scan_bytes

    scan = scan_bytes(BUILD_ON_CLASS, "x.pkl")
    assert scan.dangerous, scan.globals
    assert "CK101" in {f.code for f in scan.findings}


def test_the_vetted_unpickler_refuses_build_on_a_class():
    import argparse

    from ckptdoctor.loaders import vetted_pickle_module

    with pytest.raises(RefusedGlobal, match="BUILD on a class"):
        vetted_pickle_module().loads(BUILD_ON_CLASS)
    assert not hasattr(argparse.Namespace, "dump_patches")
    # instances are still built (the ordinary BUILD every Namespace pickle uses)
    ns = vetted_pickle_module().loads(pickle.dumps(argparse.Namespace(lr=0.5), protocol=2))
    assert ns.lr == 0.5


def test_unsafe_consumers_refuse_unknown_globals_nobody_vouched_for(tmp_path):
    """accelerate's load_custom_state unpickles custom_checkpoint_N.pkl with weights_only=False:
    a global of unknown safety there (gzip.GzipFile writes a file when called) fails the gate
    unless named with --allow."""
    from fixtures.factory import make_accelerate_state

    acc = make_accelerate_state(tmp_path / "acc")
    assert _cli("validate", acc).returncode == 0
    canary = tmp_path / "canary"
    payload = f"cgzip\nGzipFile\n(V{canary}\nVwb\ntR.".encode()
    live = subprocess.run([PY, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                          input=payload, cwd=tmp_path)
    assert live.returncode == 0 and canary.exists()  # the payload is live
    canary.unlink()
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)
    import zipfile

    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(acc / "custom_checkpoint_0.pkl", "w") as z:
        for n in zin.namelist():
            z.writestr(n, payload if n.endswith("data.pkl") else zin.read(n))
    r = _cli("validate", acc)
    assert r.returncode == 1 and "gzip.GzipFile" in r.stdout, r.stdout
    assert not canary.exists()
