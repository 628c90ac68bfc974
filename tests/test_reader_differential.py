"""Two readers, two files: torch zips that Python's zipfile and torch's own reader (miniz,
PyTorchStreamReader) read differently.

Every hostile archive below is HAND-BUILT from two archives written by the real torch.save
(no library writes such a file): the records and pickles are torch's own, only the zip
structure (a second central directory, a local-header name, a flag bit, a CRC) is edited. The
payload is an object whose __reduce__ is os.system (torch.save pickles it as `posix.system`);
a throwaway subprocess in the test's tmp dir proves torch.load(weights_only=False) really runs
it, and the test then proves ckptdoctor's commands never create the canary, report the
payload as dangerous and the file as inconclusive, and fail validate."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptdoctor.cli import app
from ckptdoctor.formats import detect_file
from ckptdoctor.model import ScanState

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
runner = CliRunner()


class Payload:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _pair(canary: Path) -> tuple[bytes, bytes]:
    """(malicious, benign) archives with the same record names in the same order."""
    t = torch.arange(4, dtype=torch.float32)
    return (_torch_bytes({"w": t, "x": Payload(f"touch {canary}")}),
            _torch_bytes({"w": t, "x": 0}))


def _cd_entry(zi: zipfile.ZipInfo, offset: int, flags: int | None = None,
              crc: int | None = None) -> bytes:
    name = zi.filename.encode()
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20,
                       zi.flag_bits if flags is None else flags, zi.compress_type, 0, 0x21,
                       zi.CRC if crc is None else crc, zi.compress_size, zi.file_size,
                       len(name), 0, 0, 0, 0, 0, offset) + name


def _eocd(n: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_offset, 0)


def _rebuild(raw: bytes, *, flags: dict[str, int] | None = None,
             crc: dict[str, int] | None = None) -> bytes:
    """The archive's local records with a fresh single central directory (optionally with
    other flag bits / CRCs for some records)."""
    zf = zipfile.ZipFile(io.BytesIO(raw))
    infos = zf.infolist()
    body = raw[:zf.start_dir]
    cd = b"".join(_cd_entry(i, i.header_offset, (flags or {}).get(i.filename),
                            (crc or {}).get(i.filename)) for i in infos)
    return body + cd + _eocd(len(infos), len(cd), len(body))


def two_central_directories(mal: bytes, ben: bytes) -> bytes:
    """[mal records][ben records][CD mal][CD ben][EOCD declaring CD mal's offset and CD ben's
    size]. miniz reads the directory at the declared offset (mal); zipfile reads the one that
    ends at the EOCD (ben) and shifts its offsets by len(CD mal)."""
    zm, zb = zipfile.ZipFile(io.BytesIO(mal)), zipfile.ZipFile(io.BytesIO(ben))
    im, ib = zm.infolist(), zb.infolist()
    assert [i.filename for i in im] == [i.filename for i in ib]
    m_body, b_body = mal[:zm.start_dir], ben[:zb.start_dir]
    cd_m = b"".join(_cd_entry(i, i.header_offset) for i in im)
    shift = len(m_body) - len(cd_m)
    assert shift >= 0
    cd_b = b"".join(_cd_entry(i, i.header_offset + shift) for i in ib)
    assert len(cd_m) == len(cd_b)
    cd_at = len(m_body) + len(b_body)
    return m_body + b_body + cd_m + cd_b + _eocd(len(im), len(cd_b), cd_at)


def _local_offset(raw: bytes, name: str) -> int:
    return zipfile.ZipFile(io.BytesIO(raw)).getinfo(name).header_offset


def local_name_differs(mal: bytes) -> bytes:
    raw = bytearray(_rebuild(mal))
    off = _local_offset(bytes(raw), "archive/data.pkl")
    n = struct.unpack_from("<H", raw, off + 26)[0]
    assert raw[off + 30:off + 30 + n] == b"archive/data.pkl"
    raw[off + 30:off + 30 + n] = b"archive/data.pkX"
    return bytes(raw)


def central_flag(mal: bytes, bit: int) -> bytes:
    return _rebuild(mal, flags={"archive/data.pkl": bit})


def crc_mismatch(mal: bytes) -> bytes:
    zi = zipfile.ZipFile(io.BytesIO(mal)).getinfo("archive/data.pkl")
    return _rebuild(mal, crc={"archive/data.pkl": zi.CRC ^ 0xFFFF})


# (builder, does torch.load(weights_only=False) run it?, code ckptdoctor reports)
CASES = {
    "two_central_directories": (lambda m, b: two_central_directories(m, b), True, "CK220"),
    "local_name_differs": (lambda m, b: local_name_differs(m), True, "CK221"),
    "crc_mismatch": (lambda m, b: crc_mismatch(m), True, "CK221"),
    # encrypted (bit 0), patch data (bit 5), strong encryption (bit 6): zipfile refuses the
    # record and so does miniz (checked: no canary), but the payload is still reported
    "central_encrypted_flag": (lambda m, b: central_flag(m, 0x0001), False, "CK221"),
    "central_patch_flag": (lambda m, b: central_flag(m, 0x0020), False, "CK221"),
    "central_strong_encryption_flag": (lambda m, b: central_flag(m, 0x0040), False, "CK221"),
}


def _torch_runs(path: Path, cwd: Path) -> None:
    """The victim: real torch.load(weights_only=False) in a throwaway subprocess."""
    subprocess.run([sys.executable, "-c", "import sys, torch\n"
                    "try:\n    torch.load(sys.argv[1], weights_only=False)\n"
                    "except Exception:\n    pass", str(path)],
                   cwd=cwd, env=ENV, capture_output=True, timeout=300)


@pytest.fixture
def hostile(tmp_path, request):
    name = request.param
    build, live, code = CASES[name]
    canary = tmp_path / "CANARY"
    mal, ben = _pair(canary)
    path = tmp_path / "ckpt" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(build(mal, ben))
    return name, path, canary, live, code


@pytest.mark.parametrize("hostile", sorted(CASES), indirect=True)
def test_payload_only_torch_reads_is_dangerous_and_inconclusive(hostile):
    name, path, canary, live, code = hostile
    # the differential is real: zipfile either refuses data.pkl or reads a benign one
    try:
        seen_by_zipfile = zipfile.ZipFile(path).read("archive/data.pkl")
    except Exception:  # BadZipFile, RuntimeError, NotImplementedError
        seen_by_zipfile = b""
    assert b"system" not in seen_by_zipfile
    if live:  # ... and torch's reader really loads the payload
        _torch_runs(path, path.parent)
        assert canary.exists(), f"{name}: torch.load did not run the payload"
        canary.unlink()

    info = detect_file(path, path.name)
    assert info.scan_state is ScanState.INCONCLUSIVE
    assert "posix.system" in {g.name for g in info.dangerous}
    codes = {f.code for f in info.findings}
    assert code in codes and "CK101" in codes
    assert not info.loadable

    doc = json.loads(runner.invoke(app, ["inspect", "--json", str(path.parent)]).stdout)
    f = next(x for x in doc["files"] if x["path"] == "model.pt")
    assert f["scan_state"] == "inconclusive"
    for args in (["validate"], ["validate", "--deep"], ["validate", "--load", "--trust"],
                 ["validate", "--consumer", "torch"]):
        r = runner.invoke(app, [*args, "--format", "json", str(path.parent)])
        assert r.exit_code == 1, (args, r.stdout[-2000:])
        assert code in {x["code"] for x in json.loads(r.stdout)["findings"]}
    from ckptdoctor.loaders import LoadError, safe_load

    with pytest.raises(LoadError):
        safe_load(path, trust=True)
    assert not canary.exists(), f"{name}: a ckptdoctor command ran the payload"


def test_clean_torch_saves_agree(tmp_path):
    """Every archive torch.save writes (zip64 records included) reads the same in both
    views: no differential finding, scan complete."""
    objs = {"small": {"w": torch.ones(2)}, "empty": {},
            "big": {"w": torch.zeros(1 << 18)},
            "sd": torch.nn.Linear(3, 3).state_dict()}
    for name, obj in objs.items():
        p = tmp_path / f"{name}.pt"
        torch.save(obj, p)
        info = detect_file(p, p.name)
        assert info.scan_state is ScanState.COMPLETE, (name, info.findings)
        assert not {"CK220", "CK221"} & {f.code for f in info.findings}


def test_benign_view_of_two_directories_alone_is_clean(tmp_path):
    """Break check for the two-directory case: the benign archive rebuilt with one
    directory (what zipfile saw) is complete and safe; only the second directory flips it."""
    canary = tmp_path / "CANARY"
    mal, ben = _pair(canary)
    p = tmp_path / "ben.pt"
    p.write_bytes(_rebuild(ben))
    info = detect_file(p, p.name)
    assert info.scan_state is ScanState.COMPLETE and not info.dangerous
    p.write_bytes(two_central_directories(mal, ben))
    assert detect_file(p, p.name).scan_state is ScanState.INCONCLUSIVE
