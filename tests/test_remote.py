"""Remote checkpoints (issue 13): fsspec URLs read by ranges, judged exactly like local copies.

A real S3 endpoint (moto's ThreadedMotoServer on a random port, reached through s3fs with
AWS_ENDPOINT_URL and dummy credentials) and a range-capable HTTP server (tests/remote_servers.py,
stdlib http.server plus Range/ETag/If-Match written for these tests) serve checkpoints the real
libraries wrote (tests/fixtures/factory.py). Both servers count what they answer, so the
`requests` / `bytes_read` ckptdoctor reports are checked against the server's own count."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptdoctor.codes import Code
from ckptdoctor.inspect import inspect_path
from ckptdoctor.render import to_json
from ckptdoctor.storage import RemotePath, as_path
from ckptdoctor.validate import ValidateOptions, validate

try:
    from tests.fixtures import factory as f
    from tests.remote_servers import MotoS3, RangeHTTP
except ImportError:  # run from inside tests/
    from fixtures import factory as f
    from remote_servers import MotoS3, RangeHTTP

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ckpts"
NAMES = ["hf_run", "hf_model", "deepspeed", "dcp", "model.pt", "evil.pt", "cut.pt", "flipped.pt"]
DIRS = {"hf_run", "hf_model", "deepspeed", "dcp"}


class Payload:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> Path:
    """The checkpoints, written once by the real libraries."""
    import torch

    r = tmp_path_factory.mktemp("remote_src")
    f.make_hf_trainer_run(r / "hf_run")  # checkpoint-2, checkpoint-4
    f.make_hf_model(r / "hf_model", sharded=True)  # 6 safetensors shards + index
    f.make_deepspeed(r / "deepspeed")  # ZeRO-2, 2 ranks
    f.make_dcp(r / "dcp")
    f.make_torch_zip(r, filename="model.pt")
    torch.save({"w": torch.zeros(4), "x": Payload(r / "CANARY")}, r / "evil.pt")
    data = (r / "model.pt").read_bytes()
    (r / "cut.pt").write_bytes(data[: len(data) // 2])
    # one bit flipped inside a storage record after torch wrote it (only --deep sees it)
    import zipfile

    with zipfile.ZipFile(r / "model.pt") as zf:
        rec = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 8)
    local_n = int.from_bytes(data[rec.header_offset + 26:rec.header_offset + 28], "little")
    local_m = int.from_bytes(data[rec.header_offset + 28:rec.header_offset + 30], "little")
    at = rec.header_offset + 30 + local_n + local_m + 4  # inside the record's data
    flipped = bytearray(data)
    flipped[at] ^= 0x01
    (r / "flipped.pt").write_bytes(bytes(flipped))
    return r


@pytest.fixture(scope="session")
def s3(local):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = MotoS3()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    server.client().create_bucket(Bucket=BUCKET)
    for name in NAMES:
        server.upload_tree(BUCKET, f"ck/{name}", local / name)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def web(local):
    server = RangeHTTP(local)
    yield server
    server.stop()


def url_of(scheme: str, name: str, s3: MotoS3, web: RangeHTTP) -> str:
    if scheme == "s3":
        return f"s3://{BUCKET}/ck/{name}"
    return f"{web.url}/{name}" + ("/" if name in DIRS else "")


def shape(report) -> dict:
    """What a report says, without where it was read from (the root in paths and hints,
    I/O counters)."""
    text = to_json(report, with_tensors=True).replace(json.dumps(report.path)[1:-1].rstrip("/"),
                                                      "<ROOT>")
    doc = json.loads(text)
    for key in ("path", "bytes_read", "requests", "memory_estimate"):
        doc.pop(key, None)
    return doc


def codes(findings) -> list[tuple[str, str]]:
    return sorted((x.path, x.code) for x in findings)


@pytest.mark.parametrize("scheme", ["s3", "http"])
@pytest.mark.parametrize("name", NAMES)
def test_inspect_and_validate_equal_local(name, scheme, local, s3, web):
    """inspect and static validate on the URL give the local copy's answers, and the I/O
    counters equal what the server saw."""
    url = url_of(scheme, name, s3, web)
    traffic = s3.traffic if scheme == "s3" else web.traffic
    here = inspect_path(local / name)
    traffic.reset()
    there = inspect_path(url)
    assert shape(there) == shape(here)
    assert there.extra["requests"] == traffic.requests
    ranged = sum(1 for m, _, rng in traffic.log if m == "GET" and rng)
    assert 0 < ranged <= there.extra["requests"]
    if (local / name).is_file():
        assert there.extra["bytes_read"] <= (local / name).stat().st_size
    local_v, local_found = validate(local / name)
    remote_v, remote_found = validate(url)
    assert codes(remote_found) == codes(local_found)
    assert remote_v.extra["verdict"] == local_v.extra["verdict"]
    assert not (local / "CANARY").exists()


def test_evil_file_is_flagged_remotely_and_never_runs(local, s3):
    report, found = validate(f"s3://{BUCKET}/ck/evil.pt")
    assert any(x.code == "CK101" for x in found)
    assert report.extra["resumable"] is False
    assert not (local / "CANARY").exists()


def test_bytes_read_counts_object_bytes(local, s3):
    """bytes_read is exactly the body bytes of the ranged GETs the server sent."""
    s3.traffic.reset()
    report = inspect_path(f"s3://{BUCKET}/ck/hf_model")
    ranged = [(p, r) for m, p, r in s3.traffic.log if m == "GET" and r]
    total = 0
    for _, rng in ranged:
        a, b = rng.removeprefix("bytes=").split("-")
        total += int(b) - int(a) + 1
    assert report.extra["bytes_read"] == total
    assert report.extra["requests"] == s3.traffic.requests


def test_directory_is_listed_once(local, s3):
    s3.traffic.reset()
    inspect_path(f"s3://{BUCKET}/ck/hf_run")
    lists = [x for x in s3.traffic.log if x[0] == "GET" and x[1] == f"/{BUCKET}"]
    # one listing for the tree (plus at most one from resolving the root as a prefix)
    assert 1 <= len(lists) <= 2, s3.traffic.log


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ckptdoctor", *args], capture_output=True,
                          text=True, env=full, cwd=ROOT)


def test_cli_inspect_json_has_io_counters(local, s3):
    r = cli("inspect", "--json", f"s3://{BUCKET}/ck/hf_model")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["bytes_read"] > 0 and doc["requests"] > 0
    assert doc["layout"]["name"] == "hf-model"
    r = cli("validate", f"s3://{BUCKET}/ck/evil.pt")
    assert r.returncode == 1 and "CK101" in r.stdout
    assert not (local / "CANARY").exists()


def test_cli_static_paths_on_s3_never_import_torch(s3):
    """Like test_cli.test_static_commands_never_import_torch, on an s3:// URL."""
    for argv in (["inspect", "--json"], ["validate"]):
        code = ("import sys, runpy\n"
                f"sys.argv = ['ckptdoctor', *{argv!r}, 's3://{BUCKET}/ck/hf_run']\n"
                "try:\n    runpy.run_module('ckptdoctor', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', "
                "file=sys.stderr)\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env)
        assert "NO_TORCH" in proc.stderr, proc.stderr[-2000:]
        assert "checkpoint-4" in proc.stdout


def test_missing_extra_is_one_line(s3):
    """gcsfs is not installed here: gs:// names the extra. s3fs hidden: s3:// names [s3]."""
    r = cli("inspect", "gs://bucket/ckpt")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "ckptdoctor: error: CK010 gs://bucket/ckpt: gs:// needs the gcs extra: "
        "pip install 'ckptdoctor[gcs]'"]
    code = ("import sys, runpy\nsys.modules['s3fs'] = None\n"
            f"sys.argv = ['ckptdoctor', 'inspect', 's3://{BUCKET}/ck/model.pt']\n"
            "runpy.run_module('ckptdoctor', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ckptdoctor: error: CK010 s3://{BUCKET}/ck/model.pt: s3:// needs the s3 extra: "
        "pip install 'ckptdoctor[s3]'"]


def test_old_s3fs_is_one_line(tmp_path):
    """A clean `pip install` once resolved s3fs to 0.4.2 (the synchronous boto3 one, which
    pip falls back to when botocore pins clash): every S3 read failed with an AttributeError.
    An s3fs below the floor is one CK010 line naming the fix. The old distribution is stood
    in by its metadata alone (a hand-made dist-info first on the path: no pip install of a
    2020 package here); nothing is contacted, so no server is needed."""
    info = tmp_path / "s3fs-0.4.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: s3fs\nVersion: 0.4.2\n")
    code = ("import sys, runpy\n"
            "sys.argv = ['ckptdoctor', 'inspect', 's3://bucket/ck/model.pt']\n"
            "runpy.run_module('ckptdoctor', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ckptdoctor: error: CK010 s3://bucket/ck/model.pt: s3:// needs s3fs>=2025.1 "
        "(installed: 0.4.2): pip install 'ckptdoctor[s3]'"]


def test_unknown_scheme_and_bad_option_are_one_line():
    r = cli("inspect", "nope://x/y")
    assert r.returncode == 2 and r.stderr.startswith("ckptdoctor: error: CK011 nope://x/y")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("inspect", "--storage-option", "novalue", "memory://x/y")
    assert r.returncode == 2 and "CK017" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_secrets_never_printed(s3):
    """Credentials in the URL and in --storage-option values appear nowhere in the output."""
    secret = "sEcReT-value-123"
    r = cli("validate", "--format", "json", "--storage-option", "key=testing",
            "--storage-option", f"secret={secret}",
            f"s3://{BUCKET}/ck/model.pt")  # moto accepts any key: the run succeeds
    assert r.returncode == 0 and json.loads(r.stdout)["requests"] > 0
    assert secret not in r.stdout + r.stderr
    # an endpoint URL with credentials that cannot be reached: the error names no secret
    r = cli("inspect", "--timeout", "3", "--storage-option",
            f"endpoint_url=http://user:{secret}@127.0.0.1:9", f"s3://{BUCKET}/ck/model.pt")
    assert r.returncode == 2 and r.stderr.startswith("ckptdoctor: error: CK01"), r.stderr
    assert secret not in r.stdout + r.stderr
    r = cli("inspect", f"https://user:{secret}@127.0.0.1:9/x.pt?X-Amz-Signature={secret}")
    assert secret not in r.stdout + r.stderr
    assert r.returncode == 2


def test_repair_on_url_is_refused():
    r = cli("repair", "--yes", f"s3://{BUCKET}/ck/evil.pt")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"ckptdoctor: error: CK015 s3://{BUCKET}/ck/evil.pt: repair does not rewrite remote "
        "checkpoints: download it, repair the local copy, upload the result (docs/remote.md)"]


def test_latest_on_remote_run(local, s3, web):
    """The newest resumable checkpoint of a Trainer run, named by its URL."""
    for url, want in ((f"s3://{BUCKET}/ck/hf_run", f"s3://{BUCKET}/ck/hf_run/checkpoint-4"),
                      (f"{web.url}/hf_run/", f"{web.url}/hf_run/checkpoint-4")):
        r = cli("latest", url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want


def test_object_changed_during_run_is_reported_not_mixed(local, s3):
    """An object replaced between the listing and a ranged read: CK012 for that file and
    nothing read from it (its tensors/globals are not reported)."""
    c = s3.client()
    c.upload_file(str(local / "model.pt"), BUCKET, "changing/model.pt")
    p = as_path(f"s3://{BUCKET}/changing")
    assert isinstance(p, RemotePath)
    from ckptdoctor.layouts.base import DirView

    view = DirView(p)  # listed: the ETag is pinned now
    assert view.files == ["model.pt"]
    # same size, other bytes: only the ETag tells the two versions apart
    assert (local / "flipped.pt").stat().st_size == (local / "model.pt").stat().st_size
    c.upload_file(str(local / "flipped.pt"), BUCKET, "changing/model.pt")
    info = view.info("model.pt")
    assert [x.code for x in info.findings] == ["CK012"]
    assert info.tensors == [] and info.globals == []
    assert info.scan_state.value == "failed"


def test_stalled_endpoint_times_out_with_a_finding(local, web):
    web.httpd.stall = ("/model.pt",)
    web.httpd.stall_seconds = 4.0
    try:
        p = as_path(f"{web.url}/model.pt", timeout=1.0)
        report, found = validate(p)
    finally:
        web.httpd.stall = ()
    assert [x.code for x in found] == ["CK013"], [(x.code, x.message) for x in found]
    assert report.extra["resumable"] is False


def test_stall_on_a_file_inside_a_directory(local, web):
    """The listing answers, one file's ranged read stalls: CK013 for that file only."""
    web.httpd.stall = ("/hf_run/checkpoint-4/config.json",)
    web.httpd.stall_seconds = 4.0
    try:
        _, found = validate(as_path(f"{web.url}/hf_run/", timeout=1.0))
    finally:
        web.httpd.stall = ()
    assert ("checkpoint-4/config.json", "CK013") in codes(found)


def test_http_server_without_ranges_is_refused(local, web):
    web.httpd.ignore_ranges = True
    try:
        _, found = validate(f"{web.url}/hf_run/")
    finally:
        web.httpd.ignore_ranges = False
    assert any(x.code == "CK018" for x in found)


def test_memory_filesystem_stands_in_for_the_hub(local):
    """hf:// goes through the generic fsspec path (cat_file ranges, find listing); fsspec's
    memory filesystem exercises that same path here, where the Hub cannot be reached."""
    import fsspec

    mem = fsspec.filesystem("memory")
    for p in (local / "hf_model").rglob("*"):
        mem.pipe_file(f"/hub/model/{p.relative_to(local / 'hf_model').as_posix()}",
                      p.read_bytes())
    there = inspect_path("memory://hub/model")
    assert shape(there) == shape(inspect_path(local / "hf_model"))
    assert there.extra["requests"] >= 1


def test_max_bytes_budget(local, s3):
    p = as_path(f"s3://{BUCKET}/ck/hf_model", max_bytes=20_000)
    _, found = validate(p)
    assert any(x.code == "CK016" for x in found)


def test_large_object_costs_a_bounded_read(tmp_path_factory, web):
    """A 1 GiB torch zip over HTTP: inspect reads <= 1% of it plus a fixed amount per file."""
    import torch

    d = tmp_path_factory.mktemp("big")
    torch.save({"w": torch.zeros(1 << 28, dtype=torch.float32), "step": 7}, d / "big.pt")
    size = (d / "big.pt").stat().st_size
    assert size >= 1 << 30
    server = RangeHTTP(d)
    try:
        report = inspect_path(f"{server.url}/big.pt")
        seen = server.traffic.body_bytes
    finally:
        server.stop()
    assert report.files[0].format == "torch-zip" and report.files[0].tensors
    assert report.extra["bytes_read"] == seen
    assert report.extra["bytes_read"] <= size // 100 + (256 << 10)
    assert report.extra["requests"] <= 8


def test_requests_per_torch_file_do_not_grow_with_its_tensors(tmp_path_factory):
    """The static scan of a torch zip costs a few requests for 4 tensors and for 400: the end
    records, the central directory and data.pkl, never one request per storage record (their
    local headers are left to --deep, which reads their bytes anyway)."""
    import torch

    d = tmp_path_factory.mktemp("many")
    for n in (4, 400):  # 64 KiB per tensor: the records lie apart, beyond any read-ahead
        torch.save({f"layer{i}.weight": torch.full((1 << 14,), float(i)) for i in range(n)},
                   d / f"t{n}.pt")
    server = RangeHTTP(d)
    try:
        got = {}
        for n in (4, 400):
            server.traffic.reset()
            report = inspect_path(f"{server.url}/t{n}.pt")
            assert len(report.files[0].tensors) == n
            assert report.extra["requests"] == server.traffic.requests
            got[n] = server.traffic.requests
    finally:
        server.stop()
    # the tail, the central directory, data.pkl with the small records around it: a few
    # requests, a larger directory at most one more (before: one more per storage record)
    assert got[4] <= 4 and got[400] <= got[4] + 2, got


def _keys(s3: MotoS3, prefix: str) -> list[str]:
    got = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in got.get("Contents", []))


def test_convert_remote_source_to_local_and_to_s3(local, s3, tmp_path):
    """s3:// source -> local file equals converting the local copy; -> s3:// destination:
    the same bytes at the final key, no staging keys or open multipart uploads left."""
    r = cli("convert", "--to", "safetensors", str(local / "model.pt"),
            str(tmp_path / "ref.safetensors"))
    assert r.returncode == 0, r.stderr
    r = cli("convert", "--to", "safetensors", f"s3://{BUCKET}/ck/model.pt",
            str(tmp_path / "got.safetensors"))
    assert r.returncode == 0, r.stderr
    ref = (tmp_path / "ref.safetensors").read_bytes()
    assert (tmp_path / "got.safetensors").read_bytes() == ref
    assert not list(tmp_path.glob(".ckptdoctor-remote-*"))
    r = cli("convert", "--to", "safetensors", f"s3://{BUCKET}/ck/model.pt",
            f"s3://{BUCKET}/out/model.safetensors")
    assert r.returncode == 0, r.stderr
    assert f"s3://{BUCKET}/out/model.safetensors" in r.stdout
    body = s3.client().get_object(Bucket=BUCKET, Key="out/model.safetensors")["Body"].read()
    assert body == ref
    assert _keys(s3, "out/") == ["out/model.safetensors"]
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    # the source is untouched and a second run refuses the existing destination
    r = cli("convert", "--to", "safetensors", f"s3://{BUCKET}/ck/model.pt",
            f"s3://{BUCKET}/out/model.safetensors")
    assert r.returncode == 1 and "must be new" in r.stderr


def test_convert_refused_source_writes_nothing_remote(local, s3):
    """A hostile source: the conversion refuses; no key appears at or beside the DST."""
    r = cli("convert", "--to", "safetensors", f"s3://{BUCKET}/ck/evil.pt",
            f"s3://{BUCKET}/out2/evil.safetensors")
    assert r.returncode == 1 and "CK101" in r.stderr, r.stderr
    assert _keys(s3, "out2/") == []
    assert not (local / "CANARY").exists()


def test_convert_sharded_dir_to_s3(local, s3, tmp_path):
    """A sharded output directory: every shard and the index land at their final keys, and
    the uploaded tree inspects exactly like the same conversion written locally."""
    r = cli("convert", "--to", "safetensors", "--max-shard-size", "20KB",
            str(local / "hf_model"), str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    r = cli("convert", "--to", "safetensors", "--max-shard-size", "20KB",
            f"s3://{BUCKET}/ck/hf_model", f"s3://{BUCKET}/out3/hf")
    assert r.returncode == 0, r.stderr
    keys = _keys(s3, "out3/")
    want = sorted(f"out3/hf/{p.relative_to(tmp_path / 'hf').as_posix()}"
                  for p in (tmp_path / "hf").rglob("*") if p.is_file())
    assert keys == want and any(k.endswith(".index.json") for k in keys)
    assert shape(inspect_path(f"s3://{BUCKET}/out3/hf")) == shape(inspect_path(tmp_path / "hf"))


@pytest.mark.parametrize("name", ["hf_run", "deepspeed", "dcp", "model.pt", "flipped.pt"])
def test_deep_validate_equals_local(name, local, s3):
    """--deep streams every byte by parallel ranged reads: the same CRC / NaN findings as on
    the local copy (flipped.pt: a CRC mismatch only --deep sees)."""
    opts = ValidateOptions(deep=True)
    _, here = validate(local / name, opts)
    p = as_path(f"s3://{BUCKET}/ck/{name}")
    report, there = validate(p, ValidateOptions(deep=True))
    assert codes(there) == codes(here)
    if name == "flipped.pt":
        assert any(x.code == Code.ZIP_CRC.code for x in there), codes(there)
    size = sum(x.size for x in report.files)
    assert report.extra["bytes_read"] >= size  # every byte was read once...
    assert report.extra["bytes_read"] <= 2 * size + (1 << 20)  # ...and not many times over


def test_deep_max_bytes_budget(local, s3):
    p = as_path(f"s3://{BUCKET}/ck/hf_run", max_bytes=200_000)
    report, found = validate(p, ValidateOptions(deep=True))
    assert any(x.code == "CK016" for x in found)
    assert report.extra["bytes_read"] <= 200_000
    assert report.extra["resumable"] is False
