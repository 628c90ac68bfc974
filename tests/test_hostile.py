"""Every hostile payload x every delivery container (tests/hostile/payloads.py).

For each pair: detect_file and inspect_path report a code-executing global (CK101) or a global
computed at load time (CK107) and never raise; the CLI's validate exits 1 with those codes in
--format json, with and without --trust --load; inspect --json prints one JSON document; the
loader chain refuses the file even with trust=True; and the canary the payload would create is
never there. A self-test first proves, in throw-away subprocesses, that every payload and every
container really runs its canary when a victim loads it, so nothing here passes on a dud.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import payloads as P

from ckptdoctor.formats import detect_file
from ckptdoctor.model import GlobalClass
from ckptdoctor.pickles.policy import classify
from ckptdoctor.pickles.scan import scan_bytes

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FLAGS = {"CK101", "CK107"}  # code-executing global / global computed at load time
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
ENV.pop("CKPTDOCTOR_DEBUG", None)


@dataclass
class Corpus:
    base: Path
    canaries: Path
    files: dict[tuple[str, str], Path]  # (payload, container) -> file to scan

    def container_dir(self, container: str) -> Path:
        return self.base / "by_container" / container

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.canaries.iterdir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    base = tmp_path_factory.mktemp("hostile")
    canaries = base / "canaries"
    canaries.mkdir()
    files = {}
    for cname, cont in P.CONTAINERS.items():
        for pname, pl in P.PAYLOADS.items():
            canary = canaries / f"{pname}__{cname}"
            files[(pname, cname)] = cont.build(pl.build(str(canary)),
                                               base / "by_container" / cname / pname)
    return Corpus(base, canaries, files)


@pytest.fixture(autouse=True)
def _no_canary_after_each_test(request):
    yield
    if "corpus" in request.fixturenames:
        corpus = request.getfixturevalue("corpus")
        time.sleep(0.05)  # a Popen payload would need a moment
        assert corpus.fired() == [], f"PAYLOAD EXECUTED: {corpus.fired()}"


def _codes(findings) -> set[str]:
    return {f.code for f in findings}


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Self-test: the payloads and containers are real.
def test_every_payload_is_live_when_unpickled(tmp_path):
    """pickle.load of each raw payload (in a subprocess) creates its canary."""
    jobs = []
    for name, pl in P.PAYLOADS.items():
        canary = tmp_path / f"canary_{name}"
        f = tmp_path / f"{name}.pkl"
        f.write_bytes(pl.build(str(canary)))
        jobs.append([str(f), pl.setup, pl.loads_kwargs])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    script = textwrap.dedent("""
        import io, json, pickle, sys
        for f, setup, kw in json.load(open(sys.argv[1])):
            exec(setup, {})
            try:  # from a file object, as torch.load reads data.pkl (io.BytesIO)
                pickle.load(io.BytesIO(open(f, 'rb').read()), **kw)
            except Exception:
                pass  # a payload has done its work before the rest of the pickle fails
    """)
    subprocess.run([PY, "-c", script, str(tmp_path / "jobs.json")], timeout=120, check=True,
                   capture_output=True, env=ENV)
    deadline = time.time() + 5
    missing = [n for n in P.PAYLOADS if not (tmp_path / f"canary_{n}").exists()]
    while missing and time.time() < deadline:  # Popen runs asynchronously
        time.sleep(0.1)
        missing = [n for n in missing if not (tmp_path / f"canary_{n}").exists()]
    assert missing == [], f"payloads that do nothing when loaded (duds): {missing}"


def test_every_container_is_live_for_its_victim_loader(tmp_path):
    """torch.load(weights_only=False) / numpy.load(allow_pickle=True) / pickle.load of each
    container (with two payloads, protocol 0 and 2) creates the canary."""
    lines = ["import pickle, warnings, torch, numpy as np", "warnings.simplefilter('ignore')"]
    expect = []
    for cname, cont in P.CONTAINERS.items():
        if not cont.loader:
            continue
        for pname in ("os_system_p0", "posix_system_p2"):
            canary = tmp_path / f"canary_{cname}_{pname}"
            path = cont.build(P.PAYLOADS[pname].build(str(canary)), tmp_path / cname / pname)
            lines += ["try:", "    " + P.LOADERS[cont.loader].format(path=str(path)),
                      "except Exception:", "    pass"]
            expect.append(canary)
    r = subprocess.run([PY, "-c", "\n".join(lines)], timeout=300, capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [c.name for c in expect if not c.exists()] == []


@pytest.fixture(scope="module")
def dcp_shards(tmp_path_factory):
    """REAL DCP checkpoints whose bytes item was pointed at a payload (torch zip, raw pickle)."""
    pytest.importorskip("torch.distributed.checkpoint")
    base = tmp_path_factory.mktemp("dcp")
    canaries = base / "canaries"
    canaries.mkdir()
    out = {}
    for kind in ("zip", "raw"):
        d = base / kind
        d.mkdir()
        pl = P.PAYLOADS["posix_system_p2"].build(str(canaries / kind))
        out[kind] = P.build_dcp_shard(P.torch_zip_bytes(pl) if kind == "zip" else pl, d)
    return base, canaries, out


def test_dcp_shard_payloads_are_live(tmp_path):
    """DCP's reader torch.loads bytes items with weights_only=False: zip or raw pickle."""
    pytest.importorskip("torch.distributed.checkpoint")
    for kind in ("zip", "raw"):
        canary = tmp_path / f"fired_{kind}"
        pl = P.PAYLOADS["posix_system_p2"].build(str(canary))
        shard = P.build_dcp_shard(P.torch_zip_bytes(pl) if kind == "zip" else pl,
                                  tmp_path / kind)
        r = subprocess.run([PY, "-c", P.dcp_load_snippet(str(shard.parent))], timeout=300,
                           capture_output=True, text=True, env=ENV)
        assert canary.exists(), (kind, r.stderr[-1500:])


def test_dcp_shards_are_flagged(dcp_shards):
    base, canaries, shards = dcp_shards
    for kind, shard in shards.items():
        info = detect_file(shard, shard.name)
        assert info.format == "dcp-shard"
        assert FLAGS & _codes(info.findings), (kind, _codes(info.findings))
    assert list(canaries.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The scanner and the format readers.
@pytest.mark.parametrize("name", list(P.PAYLOADS))
def test_scan_bytes_flags_payload(name, tmp_path):
    canary = tmp_path / "canary"
    scan = scan_bytes(P.PAYLOADS[name].build(str(canary)), name)
    assert scan.dangerous or FLAGS & _codes(scan.findings), \
        [(g.name, g.klass.value) for g in scan.globals]
    assert not scan.verdict.loads
    assert not canary.exists()


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_detect_file_flags_every_payload(container, corpus):
    misses = {}
    for pname in P.PAYLOADS:
        path = corpus.files[(pname, container)]
        info = detect_file(path, path.name)  # must not raise
        codes = _codes(info.findings)
        if not FLAGS & codes or info.format not in P.CONTAINERS[container].formats:
            misses[pname] = (info.format, sorted(codes))
    assert misses == {}


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_inspect_path_flags_every_payload(container, corpus):
    from ckptdoctor.inspect import inspect_path

    misses = {}
    for pname in P.PAYLOADS:
        path = corpus.files[(pname, container)]
        for target in (path, path.parent):  # the file itself, and its directory
            report = inspect_path(target)
            json.dumps(report.to_json())  # serialisable
            codes = _codes(report.all_findings())
            if not FLAGS & codes:
                misses[f"{pname}:{target.name}"] = sorted(codes)
    assert misses == {}


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_loader_chain_refuses_every_payload_even_trusted(container, corpus):
    from ckptdoctor.loaders import LoadError, load_with_chain, safe_load

    loaded = {}
    for pname in P.PAYLOADS:
        path = corpus.files[(pname, container)]
        for fn in (lambda p: load_with_chain(p, trust=True), lambda p: safe_load(p, trust=True)):
            try:
                res = fn(path)
            except LoadError as exc:
                trusted = [a for a in exc.attempts if a.strategy == "trusted"]
                if trusted and trusted[0].outcome == "loaded":
                    loaded[pname] = "trusted loaded"
                continue
            except Exception as exc:  # anything but LoadError is a bug here
                loaded[pname] = f"raised {type(exc).__name__}: {exc}"
                continue
            loaded[pname] = f"loaded via {getattr(res, 'strategy', '?')}"
    assert loaded == {}


# ---------------------------------------------------------------------------------------------
# The CLI, as a user runs it.
def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ckptdoctor", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


def _json_doc(stdout: str) -> dict:
    doc = json.loads(stdout)  # exactly one document: trailing data would raise
    assert isinstance(doc, dict)
    return doc


def _flagged_paths(doc: dict) -> dict[str, set[str]]:
    """codes per file; a finding inside a member ('a.zip!inner/data.pkl', 'x.distcp@123')
    counts for its file."""
    out: dict[str, set[str]] = {}
    for f in doc["findings"]:
        path = f["path"].split("!")[0].split("@")[0]
        out.setdefault(path, set()).add(f["code"])
    return out




@pytest.mark.parametrize("container", list(P.CONTAINERS))
@pytest.mark.parametrize("trust", [False, True], ids=["plain", "trust"])
def test_cli_validate_directory_of_payloads(container, trust, corpus):
    d = corpus.container_dir(container)
    before = _snapshot(d)
    args = ["validate", str(d), "--format", "json"] + (["--trust", "--load"] if trust else [])
    r = _cli(*args)
    assert "Traceback" not in r.stderr
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    flagged = _flagged_paths(_json_doc(r.stdout))
    misses = []
    for pname in P.PAYLOADS:
        rel = corpus.files[(pname, container)].relative_to(d).as_posix()
        if not FLAGS & flagged.get(rel, set()):
            misses.append((rel, sorted(flagged.get(rel, set()))))
    assert misses == []
    assert _snapshot(d) == before, "validate wrote into the checkpoint"


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_cli_inspect_json_is_one_document(container, corpus):
    r = _cli("inspect", str(corpus.container_dir(container)), "--json")
    assert "Traceback" not in r.stderr
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    doc = _json_doc(r.stdout)
    assert FLAGS & {f["code"] for f in doc["findings"]}


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_cli_single_file(container, corpus):
    """One payload per container (rotating through the list), file given directly."""
    names = list(P.PAYLOADS)
    pname = names[list(P.CONTAINERS).index(container) * 7 % len(names)]
    path = corpus.files[(pname, container)]
    for extra in ([], ["--trust"], ["--trust", "--load", "--deep"]):
        r = _cli("validate", str(path), "--format", "json", *extra)
        assert "Traceback" not in r.stderr
        assert r.returncode == 1, (extra, r.returncode, r.stderr[-500:])
        codes = {f["code"] for f in _json_doc(r.stdout)["findings"]}
        assert FLAGS & codes, (extra, codes)
    r = _cli("inspect", str(path), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert FLAGS & {f["code"] for f in _json_doc(r.stdout)["findings"]}
    r = _cli("inspect", str(path))  # the human view too
    assert r.returncode == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("container", list(P.CONTAINERS))
def test_cli_repair_and_convert_never_load_payloads(container, corpus, tmp_path):
    """repair --yes --trust over every payload of a container, and convert --trust of one:
    refused, nothing rewritten, no canary (checked after each test)."""
    d = corpus.container_dir(container)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    r = _cli("repair", str(d), "--yes", "--no-backup")
    assert "Traceback" not in r.stderr
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-500:])  # 0 only if nothing to do
    names = list(P.PAYLOADS)
    pname = names[(list(P.CONTAINERS).index(container) * 11 + 3) % len(names)]
    src = corpus.files[(pname, container)]
    for to in ("safetensors", "torch"):
        dst = tmp_path / f"out-{to}"
        r = _cli("convert", str(src), str(dst), "--to", to, "--trust")
        assert "Traceback" not in r.stderr
        assert r.returncode in (1, 2), (to, r.returncode, r.stdout[-300:], r.stderr[-300:])
        assert not dst.exists() or not any(dst.iterdir() if dst.is_dir() else [dst])
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before, "a hostile file was rewritten or a file was added"


def test_cli_convert_refusal_is_one_line_with_a_code(corpus, tmp_path):
    src = corpus.files[("os_system_p3", "plain_pkl")]
    r = _cli("convert", str(src), str(tmp_path / "out"), "--to", "safetensors", "--trust")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "CK101" in lines[0], r.stderr


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "_operator.methodcaller",
                                  "logging.os", "pydoc.pipepager"])
def test_cli_refuses_to_allow_list_dangerous_globals(name, corpus):
    path = corpus.files[("os_system_p0", "torch_zip")]
    r = _cli("validate", str(path), "--allow", name, "--trust", "--load")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "CK101" in r.stderr


# ---------------------------------------------------------------------------------------------
# Regression tests for the bypasses fixed in the scanner, the policy and the formats.
def test_genops_parser_differential_is_resynchronised():
    """INT '0x1' / LONG '0o7L' / a UTF-8 STRING make pickletools.genops raise where pickle.load
    goes on; the scanner re-synchronises and still sees the payload after them."""
    for name in ("int_base_prefix_desync", "long_base_prefix_desync", "string_utf8_desync"):
        scan = scan_bytes(P.PAYLOADS[name].build("/nonexistent/c"))
        assert [g.name for g in scan.dangerous] == ["os.system"], name
        assert scan.complete


def test_ext_opcodes_are_dynamic_globals():
    for name in ("ext1_system", "ext2_system", "ext4_system"):
        scan = scan_bytes(P.PAYLOADS[name].build("/nonexistent/c"))
        assert "CK107" in _codes(scan.findings)
        assert scan.dangerous and scan.dangerous[0].name.startswith("<extension ")


@pytest.mark.parametrize("name", [
    "logging.os", "pathlib.os", "torch.serialization.pickle", "collections.sys",
    "_operator.methodcaller", "_operator.attrgetter", "_functools.partial", "_functools.reduce",
    "pydoc.pipepager", "_osx_support._read_output", "uuid._get_command_stdout",
    "torch._utils._import_dotted_name", "logging.config.dictConfig", "_imp.create_dynamic",
    "commands.getoutput", "SocketServer.TCPServer", "SimpleHTTPServer.test", "cPickle.loads",
    "numpy.savez", "torch.save", "shelve.open", "zipfile.ZipFile", "tarfile.open",
])
def test_policy_classes_gateway_names_dangerous(name):
    assert classify(name) is GlobalClass.DANGEROUS


def test_policy_python2_names_as_dangerous_as_their_python3_targets():
    """plain pickle (torch.load(weights_only=False)) maps Python-2 module names with
    _compat_pickle; a py2 spelling must never class safer than what it imports."""
    import _compat_pickle

    for (mod, name), (pmod, pname) in _compat_pickle.NAME_MAPPING.items():
        if classify(f"{pmod}.{pname}") is GlobalClass.DANGEROUS:
            assert classify(f"{mod}.{name}") is GlobalClass.DANGEROUS, (mod, name)
    for mod, pmod in _compat_pickle.IMPORT_MAPPING.items():
        for attr in ("system", "Foo", "run"):
            if classify(f"{pmod}.{attr}") is GlobalClass.DANGEROUS:
                assert classify(f"{mod}.{attr}") is GlobalClass.DANGEROUS, (mod, attr)


@pytest.mark.parametrize("name", [
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
    "numpy.core.multiarray._reconstruct", "numpy.dtype", "_codecs.encode", "builtins.set",
    "argparse.Namespace", "_io.BytesIO", "io.BytesIO", "copy_reg._reconstructor",
    "__builtin__.set", "torch.distributed.checkpoint.metadata.Metadata", "signal.Signals",
])
def test_policy_keeps_plain_data_out_of_dangerous(name):
    assert classify(name) is not GlobalClass.DANGEROUS


def test_duplicate_and_case_variant_data_pkl_are_all_scanned(tmp_path):
    """torch (miniz) finds data.pkl case-insensitively and may take either duplicate; Python's
    zipfile takes the last. Every candidate is scanned and the ambiguity is an error."""
    pl = P.PAYLOADS["os_system_p0"].build(str(tmp_path / "canary"))
    for i, records in enumerate([
            [("archive/data.pkl", pl), ("archive/version", b"3\n"), ("archive/data.pkl", P.BENIGN)],
            [("archive/data.pkl", P.BENIGN), ("archive/version", b"3\n"), ("archive/data.pkl", pl)],
            [("archive/Data.pkl", pl), ("archive/data.pkl", P.BENIGN), ("archive/version", b"3")],
            [("archive/DATA.PKL", pl), ("archive/version", b"3\n")]]):
        f = tmp_path / f"m{i}.pt"
        f.write_bytes(P._zip(records))
        info = detect_file(f, f.name)
        assert [g.name for g in info.dangerous] == ["os.system"], i
    assert not (tmp_path / "canary").exists()


# ---------------------------------------------------------------------------------------------
# Benign twins: the fixes above must not turn ordinary checkpoints into findings.
def test_benign_checkpoints_have_no_code_execution_findings(tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    files = []
    torch.save(sd, tmp_path / "model.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "rng": torch.get_rng_state()}, tmp_path / "rng_state.pth")
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    np.save(tmp_path / "arr.npy", np.arange(4))
    np.savez(tmp_path / "arrs.npz", a=np.arange(3), b=np.ones(2))
    np.savez_compressed(tmp_path / "arrs_c.npz", a=np.arange(300))
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "latest").write_text("global_step100")
    (tmp_path / "notes.txt").write_text("checkpoint notes\nstep 5\n")
    import random

    rnd = random.Random(20240101)  # fixed noise: the verdict on noise must not be a lottery
    for i in range(50):
        (tmp_path / f"random.bin.{i}").write_bytes(rnd.randbytes(rnd.randint(1, 4096)))
    for proto in range(6):
        (tmp_path / f"p{proto}.pkl").write_bytes(pickle_dumps_benign(proto))
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    for f in files:
        info = detect_file(f, f.name)
        assert not FLAGS & _codes(info.findings), (f.name, info.format, _codes(info.findings))
        assert not info.dangerous, f.name


def pickle_dumps_benign(proto: int) -> bytes:
    import collections
    import pickle

    return pickle.dumps({"lr": 0.1, "steps": [1, 2, 3], "od": collections.OrderedDict(a=1)},
                        protocol=proto)


def test_noise_is_not_a_computed_global(tmp_path):
    """A STACK_GLOBAL on literal non-strings fails in the unpickler (malformed, not dynamic),
    and a lone EXT opcode in a file that never parses to STOP does not make noise a pickle."""
    scan = scan_bytes(b"\x80\x02K\x01K\x02\x93.")
    assert "CK105" in _codes(scan.findings) and "CK107" not in _codes(scan.findings)
    f = tmp_path / "blob.dat"
    f.write_bytes(b"\x82\x05\xff\xfe\x00garbage")
    info = detect_file(f, f.name)
    assert not FLAGS & _codes(info.findings), (info.format, _codes(info.findings))
    # ... while the same EXT inside a complete pickle is still flagged (CK107)
    f.write_bytes(P.SHORT_BINBYTES(b"\x00" * 8) + P.POP + P.PAYLOADS[
        "ext1_system"].build("/nonexistent/c"))
    assert "CK107" in _codes(detect_file(f, f.name).findings)
