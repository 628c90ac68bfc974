"""Bounded work and property tests (hypothesis).

* Generated and MUTATED inputs (bit flips, truncations, splices, insertions of real torch.save /
  legacy / safetensors / numpy / DCP files written here) go through scan_bytes, the safetensors
  parser and the zip reader (via detect_file): nothing escapes, every call is fast.
* A differential test runs the real C unpickler on generated opcode streams, with a find_class
  that records the name and imports nothing: every global the real unpickler resolves must be
  one the static scanner reports (or the scanner must say the name is computed / it gave up on
  a limit). This is the property parser-differential bypasses break.
* Caps: more opcodes than max_opcodes, huge memo indices, deep MARK nesting, giant declared
  lengths produce a finding quickly, never a hang or an exception.

Deterministic by default (tests/conftest.py's "ci" profile); set CKPTDOCTOR_HYPOTHESIS=random
to explore new examples.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import struct
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import (
    broken as B,
    payloads as P,
)

from ckptdoctor.formats import detect_file
from ckptdoctor.pickles.scan import ScanLimits, scan_bytes, scan_stream

# Bounded work is checked in CPU seconds of this process, not wall-clock time: another process
# loading the machine does not count against it. For inputs < 1 MB a call takes ~0.1 s of CPU;
# the bound only has to catch runaway work (a hang, a quadratic walk, a bomb inflated).
CPU_BOUND = 5.0
# Derandomized by the suite profile (tests/conftest.py).
FUZZ = settings(max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def timed(fn, *args, **kw):
    t = time.process_time()
    out = fn(*args, **kw)
    took = time.process_time() - t
    assert took < CPU_BOUND, f"{fn.__name__} used {took:.2f}s of CPU"
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    files = B.real_files(tmp_path_factory.mktemp("seeds"))
    out = {kind: p.read_bytes() for kind, p in files.items()}
    out["torch-zip-payload"] = P.torch_zip_bytes(P.PAYLOADS["os_system_p4"].build("/nonexistent"))
    out["npz"] = P._zip([("a.npy", P.npy_object_bytes(P.BENIGN))])
    return out


SEED_NAMES = {"torch-zip": "model.pt", "torch-legacy": "legacy.pt", "safetensors":
              "model.safetensors", "pickle": "state.pkl", "numpy": "arr.npy",
              "dcp-metadata": ".metadata", "dcp-shard": "__0_0.distcp",
              "torch-zip-payload": "pytorch_model.bin", "npz": "arrays.npz"}

# One mutation: (kind, position as a fraction of the length, argument).
MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite",
                                      "splice", "opcode"]),
                     st.floats(0, 1, allow_nan=False), st.integers(0, 255),
                     st.binary(max_size=64))
OPCODE_BYTES = [bytes([o]) for o in b"().0123IJKLMNPQRSTUVXabcdeghijklmopqrstu}]\x80\x81\x82"
                b"\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"
                b"\x96\x97\x98"]


def mutate(data: bytes, mutations, seeds: dict[str, bytes]) -> bytes:
    buf = bytearray(data)
    for kind, frac, n, blob in mutations:
        pos = int(frac * len(buf))
        if kind == "flip" and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << (n % 8)
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = blob
        elif kind == "delete":
            del buf[pos:pos + 1 + n % 32]
        elif kind == "overwrite":
            buf[pos:pos + len(blob)] = blob
        elif kind == "splice":  # a slice of another real file
            other = list(seeds.values())[n % len(seeds)]
            start = int(frac * len(other))
            buf[pos:pos] = other[start:start + 1 + n * 4]
        elif kind == "opcode":
            buf[pos:pos] = OPCODE_BYTES[n % len(OPCODE_BYTES)]
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=4096))
def test_scan_bytes_random_bytes(data):
    scan = timed(scan_bytes, data, "fuzz")
    incomplete = {"CK105", "CK106", "CK107"}  # malformed, over a limit, dynamic global
    codes = {f.code for f in scan.findings}
    if scan.complete:
        # the stdlib's own opcode parser agrees: the stream up to end_offset is whole
        ops = list(pickletools.genops(io.BytesIO(data[:scan.end_offset])))
        assert ops[-1][0].name == "STOP" and ops[-1][2] + 1 == scan.end_offset
        assert not codes & {"CK105"}
    else:
        # an unfinished scan says why, and never claims torch's weights-only loader reads it
        assert codes & incomplete, codes
        assert not scan.verdict.loads


@FUZZ
@given(st.lists(st.sampled_from(OPCODE_BYTES + [b"\x8c\x02os", b"\x8c\x06system", b"K\x01",
                                                b"cos\nsystem\n", b"q\x00", b"h\x00"]),
                max_size=300))
def test_scan_bytes_opcode_soup(parts):
    timed(scan_bytes, b"".join(parts) + b".", "fuzz")


@FUZZ
@given(kind=st.sampled_from(sorted(SEED_NAMES)), mutations=st.lists(MUTATION, min_size=1,
                                                                     max_size=6))
def test_mutated_real_files_through_detect_file(kind, mutations, seeds, tmp_path):
    data = mutate(seeds[kind], mutations, seeds)
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    f = d / SEED_NAMES[kind]
    f.write_bytes(data)
    info = timed(detect_file, f, f.name)  # never raises
    assert info.format
    if kind == "torch-zip-payload" and info.format == "torch-zip" and info.globals:
        # a mutated payload may break, but a scan that still reads it must not call it safe
        assert info.weights_only is None or not info.weights_only.loads
    timed(scan_bytes, data, "fuzz")


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_pickles_in_memory(mutations, seeds):
    for kind in ("pickle", "dcp-metadata", "torch-legacy"):
        timed(scan_bytes, mutate(seeds[kind], mutations, seeds), kind)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=20)
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X", 3]),
    "shape": st.lists(st.integers(-3, 2**40), max_size=4) | JSON,
    "data_offsets": st.lists(st.integers(-5, 2**66), min_size=0, max_size=3) | JSON,
})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=10), ENTRY | JSON, max_size=6),
       data=st.binary(max_size=256), length=st.none() | st.integers(0, 2**64 - 1),
       raw=st.none() | st.binary(max_size=64))
def test_safetensors_parser(header, data, length, raw, tmp_path):
    import json

    try:
        text = json.dumps(header).encode()
    except (ValueError, OverflowError):
        text = b"{}"
    body = raw if raw is not None else text
    blob = struct.pack("<Q", len(body) if length is None else length) + body + data
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(blob)
    info = timed(detect_file, f, f.name)
    assert info.format in ("safetensors", "pickle", "text", "json", "unknown", "empty")


@FUZZ
@given(names=st.lists(st.text(min_size=1, max_size=20) | st.sampled_from(
    ["archive/data.pkl", "archive/DATA.PKL", "../x.pkl", "/abs.pkl", "a/b/c.zip", "x.npy"]),
    min_size=1, max_size=6),
    blobs=st.lists(st.binary(max_size=200), min_size=1, max_size=6),
    deflate=st.lists(st.booleans(), min_size=1, max_size=6))
def test_zip_reader_on_generated_archives(names, blobs, deflate, tmp_path):
    import warnings
    import zipfile

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            for i, name in enumerate(names):
                zi = zipfile.ZipInfo(name)
                zi.compress_type = zipfile.ZIP_DEFLATED if deflate[i % len(deflate)] else 0
                zf.writestr(zi, blobs[i % len(blobs)])
    for suffix in (".pt", ".npz", ".distcp"):
        f = tmp_path / f"gen{suffix}"
        f.write_bytes(buf.getvalue())
        timed(detect_file, f, f.name)


# ---------------------------------------------------------------------------------------------
# Differential: the real C unpickler vs the static scanner.
class _Dummy:
    def __new__(cls, *a, **k):
        return object.__new__(cls)

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Dummy()

    def __setstate__(self, state):
        pass


class _Recorder(pickle.Unpickler):
    """Resolves every global to a harmless dummy and records its name: imports nothing."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.seen: list[tuple[str, str]] = []

    def find_class(self, module, name):
        self.seen.append((module, name))
        return _Dummy

    def persistent_load(self, pid):
        return _Dummy()


NAMES = ["os", "system", "builtins", "eval", "collections", "OrderedDict", "posixpath",
         "os.system", "torch._utils", "_rebuild_tensor_v2", "x", ""]


def _text_name():
    return st.sampled_from(NAMES)


TOKEN = st.one_of(
    st.builds(lambda s: P.SHORT_BINUNICODE(s), _text_name()),
    st.builds(lambda s: P.BINUNICODE(s), _text_name()),
    st.builds(lambda s: P.SHORT_BINSTRING(s), _text_name()),
    st.builds(lambda s: P.STRING(s), _text_name()),
    st.builds(lambda s: P.UNICODE(s), _text_name()),
    st.builds(lambda s: b"S'" + s + b"'\n", st.sampled_from([b"\xc3\xa9t\xc3\xa9", b"o\\x73",
                                                            b"\\n", b"ok"])),
    st.builds(lambda i: P.BINPUT(i), st.integers(0, 7)),
    st.builds(lambda i: P.BINGET(i), st.integers(0, 7)),
    st.builds(lambda i: P.PUT(i), st.integers(0, 7)),
    st.builds(lambda i: P.GET(i), st.integers(0, 7)),
    st.builds(lambda i: P.LONG_BINGET(i), st.integers(0, 7)),
    st.builds(lambda i: P.LONG_BINPUT(i), st.integers(0, 7)),
    st.builds(lambda m, n: P.GLOBAL(m, n), _text_name(), _text_name()),
    st.builds(lambda m, n: P.INST(m, n), _text_name(), _text_name()),
    st.builds(lambda n: P.PROTO(n), st.integers(0, 5)),
    st.builds(lambda n: P.FRAME(n), st.integers(0, 64)),
    st.builds(lambda t: b"I" + t + b"\n", st.sampled_from([b"0x1", b"0o7", b"010", b"01",
                                                          b"00", b"7", b"1_0", b"-3"])),
    st.builds(lambda t: b"L" + t + b"\n", st.sampled_from([b"0x1L", b"5L", b"0b1", b"9"])),
    st.sampled_from([P.MEMOIZE, P.STACK_GLOBAL, P.POP, P.DUP, P.MARK, b"1", P.TUPLE, P.TUPLE1,
                     P.TUPLE2, P.TUPLE3, P.EMPTY_TUPLE, P.EMPTY_LIST, P.EMPTY_DICT, b"l", b"d",
                     P.APPEND, b"e", P.SETITEM, b"u", P.REDUCE, P.NEWOBJ, P.BUILD, P.OBJ,
                     P.NONE, b"K\x01", b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91"]),
)


@settings(max_examples=400)
@given(st.lists(TOKEN, max_size=40))
def test_scanner_sees_every_global_the_real_unpickler_resolves(tokens):
    data = b"".join(tokens) + P.STOP
    rec = _Recorder(data)
    with contextlib.suppress(Exception):  # how far it got is what matters
        rec.load()
    scan = timed(scan_bytes, data, "diff")
    names = {g.name for g in scan.globals}
    gave_up = {f.code for f in scan.findings} & {"CK106", "CK107"}
    for module, name in rec.seen:
        assert f"{module}.{name}" in names or gave_up, (module, name, data)


# ---------------------------------------------------------------------------------------------
# Caps.
def _limit_codes(scan) -> set[str]:
    return {f.code for f in scan.findings}


def test_more_opcodes_than_max_opcodes():
    data = b"\x80\x02" + b"N0" * 5000 + P.GLOBAL("os", "system") + b"."
    scan = timed(scan_bytes, data, "cap", ScanLimits(max_opcodes=100))
    assert "CK106" in _limit_codes(scan) and not scan.verdict.loads
    scan = timed(scan_bytes, data, "cap")  # default limits: the payload is found
    assert [g.name for g in scan.dangerous] == ["os.system"]


def test_memo_caps():
    many = b"\x80\x04" + b"N\x94" * 2000 + b"."
    assert "CK106" in _limit_codes(timed(scan_bytes, many, "cap", ScanLimits(max_memo=100)))
    for op in (P.LONG_BINPUT(0xFFFFFFFF), b"p" + b"9" * 40 + b"\n", b"r\xff\xff\xff\x7f"):
        scan = timed(scan_bytes, b"\x80\x02N" + op + b".", "cap")
        assert scan.complete  # a sparse memo, not an allocation
    scan = timed(scan_bytes, b"\x80\x02" + P.LONG_BINGET(0xFFFFFFFF) + b".", "cap")
    assert "CK105" in _limit_codes(scan)


def test_deeply_nested_marks_and_tuples():
    scan = timed(scan_bytes, b"(" * 1_000_000 + b".", "cap")
    assert "CK106" in _limit_codes(scan)
    scan = timed(scan_bytes, b"\x80\x02N" + b"\x85" * 200_000 + b".", "cap")  # TUPLE1 chain
    assert scan.complete
    scan = timed(scan_bytes, b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".", "cap")
    assert scan.complete


@pytest.mark.parametrize("blob", [
    b"\x8d" + struct.pack("<Q", 2**63 - 1) + b"abc.",  # BINUNICODE8
    b"\x8e" + struct.pack("<Q", 2**62) + b"abc.",  # BINBYTES8
    b"\x96" + struct.pack("<Q", 2**62) + b"abc.",  # BYTEARRAY8
    b"X" + struct.pack("<I", 2**32 - 1) + b"abc.",  # BINUNICODE
    b"T" + struct.pack("<i", 2**31 - 1) + b"abc.",  # BINSTRING
    b"\x8b" + struct.pack("<i", 2**31 - 1) + b"abc.",  # LONG4
    b"\x95" + struct.pack("<Q", 2**63) + b"N.",  # FRAME
    b"S'" + b"a" * 500_000,  # STRING without its newline
])
def test_giant_declared_lengths(blob, tmp_path):
    for proto in (b"", b"\x80\x04"):
        scan = timed(scan_bytes, proto + blob, "cap")
        assert scan.findings or scan.complete
        f = tmp_path / "big.pkl"
        f.write_bytes(proto + blob)
        with open(f, "rb") as fh:  # a real file: a read(2**62) must not allocate
            timed(scan_stream, fh, "cap")
        info = timed(detect_file, f, f.name)
        assert info.findings or info.format != "pickle"


def test_one_megabyte_inputs_are_bounded(seeds, tmp_path):
    """Inputs just under 1 MB: noise, a long opcode run, a repeated real pickle."""
    import random

    rnd = random.Random(7)
    cases = {
        "noise": bytes(rnd.getrandbits(8) for _ in range(1 << 20)),
        "nones": b"\x80\x02" + b"N0" * 300_000 + b"N.",
        "memo": b"\x80\x04" + b"N\x94" * 200_000 + b".",
        "stacked": seeds["pickle"] * (900_000 // len(seeds["pickle"])),
    }
    for name, data in cases.items():
        assert len(data) < 1 << 21
        timed(scan_bytes, data, name)
        f = tmp_path / f"{name}.pkl"
        f.write_bytes(data)
        timed(detect_file, f, f.name)
