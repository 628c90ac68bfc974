"""Broken input: truncated files, corrupt zips, zip bombs, hostile record names, bad
safetensors headers, symlink loops, unreadable files, FIFOs, devices, missing paths.

Every case: no exception escapes the library, the CLI prints no traceback, exits 0/1/2 as its
contract says (2 only for an unusable PATH argument), reports a clear finding, runs in bounded
time and memory, and writes nothing (not into the checkpoint, not into the working directory).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import broken as B

from ckptdoctor.formats import detect_file
from ckptdoctor.model import Severity

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
ENV.pop("CKPTDOCTOR_DEBUG", None)
OFFSETS = 40


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    return B.real_files(tmp_path_factory.mktemp("real"))


def _codes(info) -> set[str]:
    return {f.code for f in info.findings}


def _errors(info) -> list[str]:
    return [f.code for f in info.findings if f.severity is Severity.ERROR]


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def cli(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the CLI from an empty working directory; assert it wrote nothing there and printed
    no traceback."""
    before = sorted(cwd.iterdir())
    r = subprocess.run([PY, "-m", "ckptdoctor", *args], capture_output=True, text=True,
                       timeout=timeout, env=ENV, cwd=cwd)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]
    assert sorted(cwd.iterdir()) == before, "the CLI wrote into the working directory"
    return r


@pytest.fixture
def wd(tmp_path) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    return d


def _offsets(n: int) -> list[int]:
    return sorted({max(1, n * i // (OFFSETS + 1)) for i in range(1, OFFSETS + 1)} | {1, n - 1})


# ---------------------------------------------------------------------------------------------
# Truncation at many offsets.
TRUNCATED_KINDS = ["torch-zip", "torch-legacy", "safetensors", "pickle", "dcp-metadata"]


@pytest.mark.parametrize("kind", TRUNCATED_KINDS)
def test_truncated_files_are_errors_at_every_offset(kind, real, tmp_path):
    src = real[kind]
    data = src.read_bytes()
    assert not _errors(detect_file(src, src.name)), "the untruncated file must be clean"
    silent = []
    for off in _offsets(len(data)):
        f = tmp_path / str(off) / src.name
        f.parent.mkdir()
        f.write_bytes(data[:off])
        info = detect_file(f, f.name)  # never raises
        if not _errors(info):
            silent.append((off, info.format, sorted(_codes(info))))
    assert silent == [], f"truncations reported as fine: {silent}"


@pytest.mark.parametrize("kind", TRUNCATED_KINDS)
def test_cli_validate_truncated_directory(kind, real, tmp_path, wd):
    src = real[kind]
    data = src.read_bytes()
    d = tmp_path / "cut"
    for off in _offsets(len(data)):
        f = d / f"cut{off:06d}" / src.name
        f.parent.mkdir(parents=True)
        f.write_bytes(data[:off])
    before = _snapshot(d)
    r = cli("validate", str(d), "--format", "json", cwd=wd)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    bad = {f["path"].split("/")[0] for f in doc["findings"] if f["severity"] == "error"}
    assert bad >= {p.name for p in d.iterdir()}
    assert _snapshot(d) == before
    one = d / f"cut{_offsets(len(data))[len(_offsets(len(data))) // 2]:06d}" / src.name
    r = cli("validate", str(one), cwd=wd)
    assert r.returncode == 1


# ---------------------------------------------------------------------------------------------
# Zip structure.
def _local_data_offset(raw: bytes, zi: zipfile.ZipInfo) -> int:
    n, m = struct.unpack("<HH", raw[zi.header_offset + 26:zi.header_offset + 30])
    return zi.header_offset + 30 + n + m


def test_corrupt_central_directory(real, tmp_path):
    raw = bytearray(real["torch-zip"].read_bytes())
    cd = raw.find(b"PK\x01\x02")  # first central directory entry
    z64 = raw.rfind(b"PK\x06\x06")  # torch writes a zip64 end record too
    for i, how in enumerate(("signature", "garbage", "offset", "count")):
        bad = bytearray(raw)
        if how == "signature":
            bad[cd:cd + 4] = b"XXXX"
        elif how == "garbage":
            bad[cd:len(bad) - 22] = random.Random(cd).randbytes(len(bad) - 22 - cd)
        elif how == "offset":  # the directory offset points past the end of the file
            bad[-6:-2] = struct.pack("<I", len(bad) + 1000)
            if z64 != -1:
                bad[z64 + 48:z64 + 56] = struct.pack("<Q", len(bad) + 1000)
        else:  # more entries announced than present
            bad[-12:-8] = struct.pack("<HH", 999, 999)
            if z64 != -1:
                bad[z64 + 24:z64 + 40] = struct.pack("<QQ", 999, 999)
        f = tmp_path / f"cd{i}.pt"
        f.write_bytes(bytes(bad))
        info = detect_file(f, f.name)
        assert _errors(info), (how, _codes(info))
        assert _codes(info) & {"CK201", "CK208"}, (how, _codes(info))


@pytest.mark.parametrize("damage", ["renamed", "no-signature"])
def test_storage_local_header_is_checked_by_deep_validate(real, tmp_path, wd, damage):
    """The static scan reads no storage record's local header (a bounded number of reads per
    file however many tensors: one request each on object storage); --deep reads each with
    its bytes and reports a header that disagrees with the central directory (CK221), as the
    static scan does for a pickle record. Hand-edited from a real torch.save file: one byte of
    the local name (zipfile refuses it), or the local signature (torch's reader refuses it)."""
    raw = bytearray(real["torch-zip"].read_bytes())
    zf = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    zi = next(z for z in zf.infolist() if "/data/" in z.filename)
    at = zi.header_offset + (30 + len(zi.filename) - 1 if damage == "renamed" else 0)
    raw[at] ^= 0x01
    f = tmp_path / "ckpt" / "model.pt"
    f.parent.mkdir()
    f.write_bytes(bytes(raw))
    r = cli("validate", str(f), "--deep", "--format", "json", cwd=wd)
    assert r.returncode == 1, r.stderr
    found = [x for x in json.loads(r.stdout)["findings"] if x["code"] == "CK221"]
    assert len(found) == 1 and zi.filename in found[0]["message"], r.stdout
    # the pickle records' local headers are still read statically (reader differential)
    pkl = next(z for z in zf.infolist() if z.filename.endswith("/data.pkl"))
    raw2 = bytearray(real["torch-zip"].read_bytes())
    raw2[pkl.header_offset + 30 + len(pkl.filename) - 1] ^= 0x01
    f.write_bytes(bytes(raw2))
    assert "CK221" in _codes(detect_file(f, f.name))


def test_crc_mismatch_is_found_by_deep_validate(real, tmp_path, wd):
    from ckptdoctor.formats.torch_zip import check_crc

    raw = bytearray(real["torch-zip"].read_bytes())
    zf = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    zi = next(z for z in zf.infolist() if "/data/" in z.filename)
    raw[_local_data_offset(bytes(raw), zi)] ^= 0x40  # one flipped bit in tensor data
    f = tmp_path / "ckpt" / "model.pt"
    f.parent.mkdir()
    f.write_bytes(bytes(raw))
    assert not _errors(detect_file(f, f.name))  # metadata is intact: the static pass is clean
    assert [x.code for x in check_crc(f, f.name)] == ["CK204"]
    before = _snapshot(f.parent)
    r = cli("validate", str(f), "--deep", "--format", "json", cwd=wd)
    assert r.returncode == 1, r.stderr
    assert "CK204" in {x["code"] for x in json.loads(r.stdout)["findings"]}
    r = cli("validate", str(f), "--format", "json", cwd=wd)
    assert "CK204" not in {x["code"] for x in json.loads(r.stdout)["findings"]}
    assert _snapshot(f.parent) == before


def test_compressed_torch_zip_is_reported(real, tmp_path):
    src = zipfile.ZipFile(real["torch-zip"])
    f = tmp_path / "deflated.pt"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as out:
        for zi in src.infolist():
            out.writestr(zi.filename, src.read(zi))
    info = detect_file(f, f.name)
    assert "CK205" in _codes(info)
    assert not info.dangerous


def test_zip_bomb_data_pkl_is_not_inflated(tmp_path):
    """1 GiB of zeros declared honestly: refused unread. Declared as 100 bytes: zipfile is
    asked for 100 bytes only, and the CRC check fails."""
    import resource
    import time

    for name, declared in (("honest.pt", None), ("liar.pt", 100)):
        f = tmp_path / name
        f.write_bytes(B.raw_zip([B.bomb("archive/data.pkl", 1 << 30, declared),
                                 B.stored("archive/version", b"3\n")]))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.process_time()
        info = detect_file(f, f.name)
        assert time.process_time() - t < 5  # CPU seconds: unread, not inflated
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 << 10  # KiB
        assert "CK205" in _codes(info) and _errors(info)
        assert _codes(info) & {"CK106", "CK208"}


def test_many_duplicate_records_cost_linear_time_and_one_line(tmp_path):
    """8,000 central-directory records all named archive/data.pkl (< 1 MB; hand-built with
    zipfile: torch.save never writes duplicates). Matching pickle records across torch's and
    zipfile's views was quadratic (~7 s CPU); the CK208 message named every record (~150 KB)."""
    import time
    import warnings

    f = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about each duplicate name
        with zipfile.ZipFile(f, "w") as z:
            for _ in range(8001):
                z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
            z.writestr("archive/version", b"3\n")
    assert f.stat().st_size < 1 << 20
    t = time.process_time()
    info = detect_file(f, f.name)
    assert time.process_time() - t < 2  # CPU seconds, not wall clock
    ambiguous = [x for x in info.findings if x.code == "CK208" and "ambiguous" in x.message]
    assert len(ambiguous) == 1 and "8001 records" in ambiguous[0].message
    assert all(len(x.message) < 1000 and "\n" not in x.message for x in info.findings)


BOMB_SCRIPT = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from hostile import broken as B
from ckptdoctor.formats import detect_file
kind, f = sys.argv[2], Path(sys.argv[3])
if kind == "members":   # 12 members of 256 MiB zeros each (3 GiB), 3 MB on disk
    f.write_bytes(B.raw_zip([B.bomb(f"m{i}.pkl", 256 << 20) for i in range(12)]))
elif kind == "nested":  # 8 nested zips x 4 bomb members
    inner = B.raw_zip([B.bomb(f"m{i}.pkl", 256 << 20) for i in range(4)])
    f.write_bytes(B.raw_zip([B.stored(f"in{i}.zip", inner) for i in range(8)]))
elif kind == "npz":     # one 2 GiB member
    f.write_bytes(B.raw_zip([B.bomb("a.npy", 2 << 30)]))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.process_time()
info = detect_file(f, f.name)
print(json.dumps({"cpu_seconds": time.process_time() - t,
                  "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
                  "codes": sorted({x.code for x in info.findings})}))
"""


@pytest.mark.parametrize("kind", ["members", "nested", "npz"])
def test_zip_bombs_cost_bounded_time_and_memory(kind, tmp_path):
    """Members are inflated at most MAX_INFLATE each and MAX_MEMBER_BYTES (1 GiB) in total per
    file, nested archives included; npz members are streamed (header only)."""
    f = tmp_path / ("bomb.npz" if kind == "npz" else "bomb.zip")
    r = subprocess.run([PY, "-c", BOMB_SCRIPT, str(Path(__file__).parent), kind, str(f)],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["cpu_seconds"] < 60, out
    assert out["rss_mb"] < 1200, out  # ~2 x MAX_INFLATE; never the 3-32 GiB the bombs hold
    if kind != "npz":
        assert "CK106" in out["codes"], out


def test_record_names_that_climb_out_are_reported_and_never_extracted(tmp_path):
    target = tmp_path / "escaped.pkl"
    for i, name in enumerate(["../escaped.pkl", "/tmp/abs.pkl", "archive/../../escaped.pkl",
                              "C:/x/escaped.pkl", "..\\escaped.pkl"]):
        f = tmp_path / "in" / f"z{i}.pt"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(B.raw_zip([B.stored("archive/data.pkl", b"\x80\x02}."),
                                 B.stored(name, b"\x80\x02cos\nsystem\n."),
                                 B.stored("archive/version", b"3\n")]))
        info = detect_file(f, f.name)
        assert "CK206" in _codes(info), (name, _codes(info))
    assert not target.exists() and not Path("/tmp/abs.pkl").exists()


# ---------------------------------------------------------------------------------------------
# safetensors headers.
def _st(header: bytes | dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("case,blob,code", [
    ("length past the file", _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                                 b"\0" * 4, length=10_000), "CK302"),
    ("length near 2**64", _st(b"{}", length=2**64 - 9), "CK302"),
    ("length 2**63", _st(b"{}", length=2**63), "CK302"),
    ("invalid JSON", _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'),
     "CK303"),
    ("not UTF-8", _st(b'{"\xff\xfe": 1}'), "CK303"),
    ("JSON array", _st(b"[1, 2, 3]"), "CK303"),
    ("deep nesting", _st(b"[" * 100_000 + b"]" * 100_000), "CK303"),
    ("duplicate keys", _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                           b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                           b"\0" * 8), "CK303"),
    ("overlapping offsets", _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                b"\0" * 12), "CK304"),
    ("offsets past the data", _st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                  b"\0" * 8), "CK305"),
    ("huge shape", _st({"a": {"dtype": "F32", "shape": [2**62, 2**62],
                              "data_offsets": [0, 4]}}, b"\0" * 4), "CK304"),
    ("negative dim", _st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
                         b"\0" * 4), "CK306"),
    ("unknown dtype", _st({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
                          b"\0" * 16), "CK306"),
    ("bad metadata", _st({"__metadata__": {"format": 1}}), "CK306"),
])
def test_broken_safetensors_headers(case, blob, code, tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(blob)
    info = detect_file(f, f.name)
    assert code in _codes(info), (case, info.format, _codes(info))
    assert _errors(info)


# ---------------------------------------------------------------------------------------------
# The file system.
def test_symlink_loops_terminate(tmp_path, wd):
    d = tmp_path / "loops"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "up").symlink_to(d)  # a directory cycle
    (d / "a" / "self").symlink_to(d / "a" / "self")  # ELOOP
    (d / "ping").symlink_to(d / "pong")
    (d / "pong").symlink_to(d / "ping")
    (d / "a" / "model.pkl").write_bytes(b"\x80\x02}.")
    from ckptdoctor.inspect import inspect_path

    report = inspect_path(d)  # terminates
    assert "CK005" in {f.code for f in report.all_findings()}
    r = cli("validate", str(d), "--format", "json", timeout=60, cwd=wd)
    assert r.returncode == 1
    assert "CK005" in {f["code"] for f in json.loads(r.stdout)["findings"]}
    r = cli("validate", str(d / "ping"), timeout=60, cwd=wd)
    assert r.returncode == 2 and "CK005" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files; see the "
                                              "test_unreadable_file_without_read_override")
def test_unreadable_file_chmod(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    f.chmod(0)
    try:
        info = detect_file(f, f.name)
        assert "CK002" in _codes(info)
    finally:
        f.chmod(0o600)


def _run_without_file_override(code: str) -> subprocess.CompletedProcess:
    """Run python code with CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH dropped (util-linux setpriv),
    so root gets the real EACCES an ordinary user gets on a chmod-000 file."""
    return subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                           sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="non-root: covered by test_unreadable_file_chmod")
def test_unreadable_file_without_read_override(tmp_path):
    """chmod 000 read by a process that really cannot read it: CK002, and the CLI says so."""
    f = tmp_path / "model.pt"
    f.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    f.chmod(0)
    try:
        r = _run_without_file_override(
            "from pathlib import Path\nfrom ckptdoctor.formats import detect_file\n"
            f"print(sorted({{x.code for x in detect_file(Path({str(f)!r}), 'model.pt').findings}}))"
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "['CK002']"
        r = _run_without_file_override(
            "import sys, runpy\n"
            f"sys.argv = ['ckptdoctor', 'validate', {str(tmp_path)!r}, '--format', 'json']\n"
            "runpy.run_module('ckptdoctor', run_name='__main__')\n")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "CK002" in {x["code"] for x in json.loads(r.stdout)["findings"]}
    finally:
        f.chmod(0o600)


def test_empty_directory(tmp_path, wd):
    d = tmp_path / "empty"
    d.mkdir()
    for cmd in (["validate", str(d), "--format", "json"], ["inspect", str(d), "--json"]):
        r = cli(*cmd, cwd=wd)
        assert r.returncode in (0, 1)
        assert "CK006" in {f["code"] for f in json.loads(r.stdout)["findings"]}
    assert cli("validate", str(d), cwd=wd).returncode == 1
    assert list(d.iterdir()) == []


def test_directory_of_random_bytes(tmp_path, wd):
    import random

    rnd = random.Random(1234)
    d = tmp_path / "noise"
    d.mkdir()
    names = ["model.bin", "model.safetensors", "x.pt", "blob.dat", "arr.npy", "state.pkl",
             ".metadata", "__0_0.distcp", "config.json", "latest", "optimizer.pt.1", "rng.pth"]
    for name in names:
        (d / name).write_bytes(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 5000))))
    for name in names:
        detect_file(d / name, name)  # never raises
    before = _snapshot(d)
    r = cli("validate", str(d), "--format", "json", cwd=wd)
    assert r.returncode in (0, 1)
    doc = json.loads(r.stdout)
    bad = {f["path"] for f in doc["findings"] if f["severity"] == "error"}
    # Files whose name promises a checkpoint format are errors when they are noise.
    assert {"model.bin", "model.safetensors", "x.pt", "rng.pth"} <= bad
    r = cli("inspect", str(d), "--json", cwd=wd)
    assert r.returncode in (0, 1)
    json.loads(r.stdout)
    assert _snapshot(d) == before


FIFO_SCRIPT = r"""
import sys
from pathlib import Path
from ckptdoctor.formats import detect_file
from ckptdoctor.inspect import inspect_path
p = Path(sys.argv[1])
print(sorted({f.code for f in detect_file(p, p.name).findings}))
print(sorted({f.code for f in inspect_path(p.parent).all_findings()}))
"""


def test_fifo_never_blocks(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    fifo = d / "model.pt"
    os.mkfifo(fifo)  # no writer: an open() for reading would block forever
    r = subprocess.run([PY, "-c", FIFO_SCRIPT, str(fifo)], capture_output=True, text=True,
                       timeout=30, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "CK004" in r.stdout.splitlines()[0] and "CK004" in r.stdout.splitlines()[1]


@pytest.mark.parametrize("what", ["fifo", "fifo-in-dir", "/dev/null", "/dev/zero"])
def test_cli_special_files(what, tmp_path, wd):
    if what.startswith("fifo"):
        (tmp_path / "ck").mkdir()
        target = tmp_path / "ck" / "model.pt"
        os.mkfifo(target)
        if what == "fifo-in-dir":
            (tmp_path / "ck" / "config.json").write_text("{}")
            target = tmp_path / "ck"
    else:
        target = Path(what)
        if not target.exists():
            pytest.skip(f"{what} missing")
    r = cli("validate", str(target), "--format", "json", timeout=30, cwd=wd)
    assert r.returncode == 1, r.stderr
    assert "CK004" in {f["code"] for f in json.loads(r.stdout)["findings"]}
    r = cli("inspect", str(target), "--json", timeout=30, cwd=wd)
    assert r.returncode in (0, 1)
    json.loads(r.stdout)


@pytest.mark.parametrize("cmd", ["validate", "inspect", "latest"])
def test_cli_nonexistent_path_is_exit_2_with_one_line(cmd, tmp_path, wd):
    missing = tmp_path / "no" / "such" / "ckpt.pt"
    r = cli(cmd, str(missing), cwd=wd)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "CK001" in lines[0]
    assert r.stdout == ""
    assert not missing.parent.exists()


def test_library_on_missing_and_special_paths(tmp_path):
    from ckptdoctor.inspect import inspect_path

    assert "CK001" in _codes(detect_file(tmp_path / "nope", "nope"))
    assert {f.code for f in inspect_path(tmp_path / "nope").all_findings()} == {"CK001"}
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert "CK005" in _codes(detect_file(tmp_path / "dangling", "dangling"))
    assert "CK004" in _codes(detect_file(tmp_path, "dir-as-file"))
