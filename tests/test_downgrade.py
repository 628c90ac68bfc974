"""pickles/downgrade.py: any-protocol pickles rewritten into the protocol-2 opcodes torch's
weights-only unpickler reads, with the same object graph; and repair using it.

Every file and pickle here is written by the test itself, which is the only reason the trusted
loads below (`torch.load(weights_only=False)`, `pickle.loads`) are allowed: they give the
reference object graph. Never do this with a file from elsewhere."""

from __future__ import annotations

import codecs
import collections
import copyreg
import io
import math
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from ckptdoctor.formats.downgraded import open_downgraded
from ckptdoctor.pickles.downgrade import TORCH_OPCODES, DowngradeError, downgrade, rewrite
from ckptdoctor.repair import plan_repair, render_result, repair
from ckptdoctor.repair.plan import convert_file
from ckptdoctor.repair.transcode import TranscodeRefused
from ckptdoctor.repair.verify import numpy_draws

PROTOCOLS = range(0, pickle.HIGHEST_PROTOCOL + 1)
TORCH_PROTOCOLS = (2, 3, 4, 5)


# --- comparing object graphs ---------------------------------------------------------------------
def canon(obj, seen=None, storages=None):
    """A comparable picture of the object graph: values and types, plus which containers and
    tensor storages are shared (numbered in visit order), cycles included."""
    seen = {} if seen is None else seen
    storages = {} if storages is None else storages
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, float):
        return ("float", struct.pack(">d", obj) if not math.isnan(obj) else "nan")
    if isinstance(obj, complex):
        return ("complex", canon(obj.real), canon(obj.imag))
    if id(obj) in seen:
        return ("ref", seen[id(obj)])
    seen[id(obj)] = len(seen)
    t = type(obj)
    if isinstance(obj, torch.Tensor):
        st_ = obj.untyped_storage()
        sid = storages.setdefault(st_.data_ptr() if st_.nbytes() else ("empty", id(obj)),
                                  len(storages))
        return (t.__name__, str(obj.dtype), tuple(obj.shape), obj.stride(), obj.storage_offset(),
                obj.requires_grad, sid, bytes(st_.cpu()))
    if t in (list, tuple):
        return (t.__name__, [canon(x, seen, storages) for x in obj])
    if t in (dict, collections.OrderedDict, collections.Counter):
        extra = dict(getattr(obj, "__dict__", {}) or {})
        return (t.__name__, [(canon(k, seen, storages), canon(v, seen, storages))
                             for k, v in obj.items()],
                canon(extra, seen, storages) if extra else None)
    if t in (set, frozenset):
        return (t.__name__, sorted(repr(canon(x, {}, {})) for x in obj))
    if t is bytearray:
        return ("bytearray", bytes(obj))
    raise TypeError(f"canon: {t}")


def only_torch_opcodes(data: bytes) -> None:
    """torch's own opcode walker (it raises "Unsupported operand" on anything else) reads the
    whole stream, which starts with PROTO 2."""
    from torch._weights_only_unpickler import get_globals_in_pkl

    f = io.BytesIO(data)
    get_globals_in_pkl(f)
    assert f.tell() == len(data) and data[:2] == b"\x80\x02"
    try:  # pickletools agrees where it can parse: it is stricter than torch's walker on text
        # opcodes (a non-ASCII GLOBAL line, a STRING argument ending in a backslash), which
        # torch reads and the assertions above already covered.
        names = {op.name for op, _, _ in pickletools.genops(data)}
    except (UnicodeDecodeError, ValueError):
        return
    assert names <= TORCH_OPCODES, names - TORCH_OPCODES


def test_only_torch_opcodes_tolerates_what_only_pickletools_rejects():
    """Regression (CI failure on a clean clone): a mutated pickle whose GLOBAL line ends in a
    backslash is read by torch's walker but makes pickletools raise ValueError('Trailing \\ in
    string'). The helper must judge it by torch's walker, not crash."""
    only_torch_opcodes(b"\x80\x02ca\\\nb\\\n.")


def weights_only_loads(data: bytes, allow=()):
    """torch's weights-only unpickler on a bare pickle (no zip, no storages)."""
    from torch import _weights_only_unpickler as wou

    with torch.serialization.safe_globals(list(allow)):
        return wou.Unpickler(io.BytesIO(data), encoding="utf-8").load()


# --- objects --------------------------------------------------------------------------------------
def _shared_and_cycles():
    shared = [1, "x"]
    cyc = [0]
    cyc.append(cyc)
    d: dict = {"name": "d"}
    d["self"] = d
    od = collections.OrderedDict(a=shared)
    od["again"] = shared
    return {"shared": shared, "twice": [shared, shared, (shared,)], "cyc": cyc, "dict_cycle": d,
            "od": od}


def _tensors():
    base = torch.arange(24, dtype=torch.float32)
    param = torch.nn.Parameter(torch.ones(2, 2))
    sd = collections.OrderedDict([("w", torch.randn(3, 3)), ("b", torch.zeros(3))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])  # like a real state_dict
    return {
        "base": base, "view": base.view(4, 6)[1:3], "t": base.view(4, 6).t(),
        "offset": base[5:9], "same": base,  # the very same tensor twice
        "bf16": torch.linspace(-2, 2, 7, dtype=torch.bfloat16),
        "half": torch.ones(3, dtype=torch.float16), "i8": torch.tensor([-1, 2], dtype=torch.int8),
        "bool": torch.tensor([True, False]), "c64": torch.tensor([1 + 2j], dtype=torch.complex64),
        "empty": torch.empty(0, 3), "scalar": torch.tensor(3.5), "param": param,
        "state_dict": sd,
    }


SAFE_OBJECTS = {
    "nested": {"a": [1, 2, (3, 4, 5, 6)], "b": {"c": {"d": [None, True, False]}}, "e": ()},
    "ordereddict": collections.OrderedDict([("z", 1), ("a", [2]), ("m", {"k": 3})]),
    "counter": collections.Counter("hello"),
    "strings": ["", "ascii", "héllo wörld", "日本語テキスト", "emoji 🎉", "x" * 70000,
                "ü" * 200, "\x00\n\r\\'\""],
    "bytes": [b"", b"ab", bytes(range(256)), b"\xff" * 300, b"z" * 70000],
    "bytearray": bytearray(b"\x00\x01\xfe"),
    "sets": {"empty": set(), "small": {1, 2, "x"}, "batched": set(range(2500)),
             "strs": {"a", "b", "ç"}},
    "ints": [0, 1, 255, 256, 65535, 65536, -1, -(2 ** 31), 2 ** 31 - 1, 2 ** 31, 2 ** 63,
             -(2 ** 100), 2 ** 2000, -(2 ** 2039)],
    "floats": [0.0, -0.0, 1.5, 1e300, -1e-300, float("inf"), float("-inf"), float("nan")],
    "complex": [1 + 2j, complex(0, -0.0)],
    "consts": (None, True, False),
    "many_memo": [[i, str(i)] for i in range(700)],  # memo indices over 255: LONG_BINPUT/GET
    "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((), ((),))],
    "dict_keys": {1: "int", (1, "t"): "tuple", "s": "str", None: "none", 2.5: "float"},
}
FROZEN_OBJECTS = {"frozensets": [frozenset(), frozenset({1, "a", (2, 3)}), frozenset(range(1500))]}


def needs(name: str, protocol: int) -> list:
    """The allow-list an object needs under torch's weights-only unpickler, whatever the
    rewrite: builtins.frozenset, and builtins.bytes, which protocols 0-2 use for b''."""
    return ([frozenset] if name in FROZEN_OBJECTS else []) + (
        [bytes] if name == "bytes" and protocol <= 2 else [])


def torch_objects():
    objs = dict(SAFE_OBJECTS)
    objs["shared_and_cycles"] = _shared_and_cycles()
    objs["tensors"] = _tensors()
    objs["many_tensors"] = {f"layer{i}.w": torch.full((4,), float(i)) for i in range(600)}
    objs["mixed"] = {"t": _tensors(), "o": SAFE_OBJECTS["nested"], "s": {1, 2}}
    return objs


# --- plain pickles --------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted({**SAFE_OBJECTS, **FROZEN_OBJECTS}) + ["shared_and_cycles"])
def test_plain_pickles_round_trip(name, protocol):
    obj = _shared_and_cycles() if name == "shared_and_cycles" else {**SAFE_OBJECTS,
                                                                    **FROZEN_OBJECTS}[name]
    src = pickle.dumps(obj, protocol=protocol)
    out = downgrade(src)
    only_torch_opcodes(out)
    ref = pickle.loads(src)  # self-made data: see the module docstring
    assert canon(pickle.loads(out)) == canon(ref)
    assert canon(weights_only_loads(out, needs(name, protocol))) == canon(ref)


@pytest.mark.parametrize("name", sorted(SAFE_OBJECTS) + ["shared_and_cycles"])
def test_protocol2_is_a_fixed_point(name):
    obj = _shared_and_cycles() if name == "shared_and_cycles" else SAFE_OBJECTS[name]
    src = pickle.dumps(obj, protocol=2)
    assert downgrade(src) == src


def test_stack_global_strings_reused_as_data():
    """The module name consumed by STACK_GLOBAL is the same str object as a dict key: the key
    is written again (BINUNICODE + BINPUT of its original memo index)."""
    obj = [collections.OrderedDict(a=1), {"collections": 1, "OrderedDict": 2},
           collections.OrderedDict(b=2)]
    src = pickle.dumps(obj, protocol=4)
    assert b"\x93" in src and b"h\x01" in src  # STACK_GLOBAL, BINGET 1 ('collections')
    out = downgrade(src)
    only_torch_opcodes(out)
    assert canon(pickle.loads(out)) == canon(obj)
    assert out.count(b"ccollections\nOrderedDict\n") == 1


def _framed(*bodies: bytes) -> bytes:
    return b"\x80\x04" + b"".join(b"\x95" + struct.pack("<Q", len(b)) + b for b in bodies)


def test_frame_between_module_and_name():
    src = _framed(b"\x8c\x0bcollections\x94", b"\x8c\x0bOrderedDict\x94\x93\x94)R\x94.")
    assert pickle.loads(src) == collections.OrderedDict()
    out = downgrade(src)
    only_torch_opcodes(out)
    assert out == b"\x80\x02ccollections\nOrderedDict\nq\x02)Rq\x03."
    assert weights_only_loads(out) == collections.OrderedDict()


def test_memoize_numbers_memo_entries_by_count():
    # BINPUT 0, BINPUT 0 again (overwrite), then MEMOIZE: it stores at len(memo) == 1
    src = b"\x80\x04]q\x00]q\x00]\x94h\x01h\x00\x87h\x00\x86."
    out = downgrade(src)
    only_torch_opcodes(out)
    assert canon(pickle.loads(out)) == canon(pickle.loads(src))


def test_dup_and_pop_of_a_literal():
    src = b"\x80\x02]2\x86."  # EMPTY_LIST DUP TUPLE2: the same list twice
    out = downgrade(src)
    only_torch_opcodes(out)
    a, b = weights_only_loads(out)
    assert a is b and a == []
    src = b"\x80\x04\x8c\x01a\x940K\x07h\x00\x86."  # 'a' MEMOIZE POP 7 GET 0 TUPLE2
    out = downgrade(src)
    only_torch_opcodes(out)
    assert pickle.loads(out) == pickle.loads(src) == (7, "a")


def test_protocol0_text_opcodes():
    src = (b"(lp0\nI01\naI00\naI12\naL99999999999999999999L\naF1.25\naS'py2'\np1\nag1\na"
           b"(dp2\nVk\nI1\nsa(I1\nI2\nta.")
    out = downgrade(src)
    only_torch_opcodes(out)
    assert pickle.loads(out) == pickle.loads(src)
    assert pickle.loads(out, encoding="bytes") == pickle.loads(src, encoding="bytes")
    assert pickle.loads(src)[:2] == [True, False]


def test_python2_str_keeps_its_encoding_semantics():
    src = b"\x80\x02U\x03\xc3\xa9x."  # SHORT_BINSTRING: decoded with the load's encoding
    for enc in ("bytes", "latin-1", "utf-8"):
        assert pickle.loads(downgrade(src), encoding=enc) == pickle.loads(src, encoding=enc)
    long = b"T" + struct.pack("<i", 300) + b"a" * 300 + b"."  # BINSTRING of 300 bytes
    with pytest.raises(DowngradeError, match="Python 2 str"):
        downgrade(long)
    short = b"T" + struct.pack("<i", 3) + b"abc."
    assert pickle.loads(downgrade(short), encoding="bytes") == b"abc"


class NewArgsEx:
    """Pickled with NEWOBJ_EX in protocol 4, keyword arguments or not."""

    kwargs: dict = {}

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.args, self.kw = args, kwargs
        return self

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj_ex__, (type(self), self.args, dict(type(self).kwargs))

    def __eq__(self, other):
        return type(other) is type(self) and (self.args, self.kw) == (other.args, other.kw)


def test_newobj_ex():
    obj = NewArgsEx(1, "a")
    src = pickle.dumps(obj, protocol=4)
    assert b"\x92" in src  # NEWOBJ_EX
    out = downgrade(src)
    only_torch_opcodes(out)
    assert pickle.loads(out) == obj
    NewArgsEx.kwargs = {"k": 1}
    try:
        with pytest.raises(DowngradeError, match="keyword"):
            downgrade(pickle.dumps(NewArgsEx(1), protocol=4))
    finally:
        NewArgsEx.kwargs = {}


class Outer:
    class Inner:
        pass


def _recursive_tuple():
    t = ([],)
    t[0].append(t)
    return t


def _long_recursive_tuple():
    t = ([], 1, 2, 3)
    t[0].append(t)
    return t


@pytest.mark.parametrize("src,match", [
    (b"\x80\x04]\x8c\x01x\x93.", "STACK_GLOBAL"),  # name not a literal pushed just before
    (b"\x80\x04\x8c\x0bcollections\x8c\x14OrderedDict.fromkeys\x93.", "dotted"),
    (b"\x80\x04\x8c\x0b__builtin__\x8c\x03set\x93)R.", "fix_imports"),
    (b"\x80\x04c__builtin__\nset\n)R.", "fix_imports"),
    (pickle.dumps(2 ** 3000, protocol=4), "int of"),
    (pickle.dumps(_recursive_tuple(), protocol=4), "POP"),
    (pickle.dumps(_long_recursive_tuple(), protocol=4), "POP_MARK"),
    (pickle.dumps(Outer.Inner, protocol=4), "dotted"),
    (b"\x80\x02\x82\x01.", "extension registry"),  # EXT1
    (b"\x80\x05\x97.", "out-of-band"),  # NEXT_BUFFER
    (b"Pabc\n.", "PERSID"),
    (b"(i__main__\nX\n.", "INST"),
    (b"(c__main__\nX\no.", "OBJ"),
    (b"\x80\x04\x8f\x94(h\x00\x90.", "itself"),  # a set added to itself
    (b"\x80\x04]\x94(K\x01\x90.", "ADDITEMS"),  # ADDITEMS on a list
    (b"\x80\x02h\x05.", "never stored"),
    (b"\x80\x02K\x01", "malformed"),  # no STOP
    (b"\x80\x02K\x01.junk", "after the pickle"),
    (b"\x80\x02(K\x01.", "MARK"),
])
def test_refused(src, match):
    with pytest.raises(DowngradeError, match=match):
        downgrade(src)


def test_protocol2_global_is_left_alone():
    # a protocol-2 stream maps Python 2 names itself: GLOBAL __builtin__ set stays as it is
    src = pickle.dumps({1}, protocol=2)
    assert b"c__builtin__\nset\n" in src and downgrade(src) == src


# --- hypothesis: random nested objects of safe types ----------------------------------------------
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2 ** 2000), 2 ** 2000)
            | st.floats(allow_nan=True) | st.text(max_size=300) | st.binary(max_size=300)
            | st.complex_numbers(allow_nan=False))
_keys = st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.tuples(
    st.integers(), st.text(max_size=5))
_hashables = st.integers() | st.text(max_size=20) | st.tuples(st.integers(), st.text(max_size=5))
_objects = st.recursive(
    _scalars,
    lambda kids: (st.lists(kids, max_size=6) | st.tuples(kids, kids)
                  | st.tuples(kids, kids, kids, kids)
                  | st.dictionaries(_keys, kids, max_size=6)
                  | st.builds(collections.OrderedDict,
                              st.lists(st.tuples(st.text(max_size=8), kids), max_size=5))
                  | st.sets(_hashables, max_size=8) | st.frozensets(_hashables, max_size=8)),
    max_leaves=40)


def _share(obj, data):
    """Make some references shared: the same sub-object in two places."""
    if isinstance(obj, list) and obj:
        return [obj[0], obj, obj[0]] if data.draw(st.booleans()) else obj
    return obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=_objects, data=st.data())
def test_hypothesis_round_trip(obj, data):
    obj = _share(obj, data)
    ref = canon(obj)
    for p in PROTOCOLS:
        out = downgrade(pickle.dumps(obj, protocol=p))
        only_torch_opcodes(out)
        assert canon(pickle.loads(out)) == ref, p
        assert canon(weights_only_loads(out, [frozenset, bytes])) == ref, p


# --- torch.save files -----------------------------------------------------------------------------
def rebuild_zip(src: Path, dst: Path) -> None:
    """The same archive (record names and order, all STORED) with data.pkl downgraded."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = downgrade(data)
            zout.writestr(zipfile.ZipInfo(info.filename, info.date_time), data)


def trusted_load(path: Path):
    # The test wrote this file itself a moment ago: only that makes a trusted load acceptable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for name, obj in {**torch_objects(), **FROZEN_OBJECTS}.items():
        for p in TORCH_PROTOCOLS:
            path = root / f"{name}-p{p}.pt"
            torch.save(obj, path, pickle_protocol=p)
            out[name, p] = path
    return out


@pytest.mark.parametrize("protocol", TORCH_PROTOCOLS)
@pytest.mark.parametrize("name", sorted(torch_objects()) + sorted(FROZEN_OBJECTS))
def test_torch_save_rewritten_zip_loads_weights_only(saved, tmp_path, name, protocol):
    src = saved[name, protocol]
    ref = canon(trusted_load(src))
    dst = tmp_path / "p2.pt"
    rebuild_zip(src, dst)
    with zipfile.ZipFile(dst) as z:
        only_torch_opcodes(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
    with torch.serialization.safe_globals(needs(name, protocol)):
        assert canon(torch.load(dst, weights_only=True)) == ref
        assert canon(torch.load(dst, weights_only=True, mmap=True)) == ref
        with open_downgraded(src) as view:  # what repair reads: nothing copied but the pickle
            assert view.info.protocol == protocol
            assert canon(torch.load(view, weights_only=True)) == ref


@pytest.mark.parametrize("protocol", TORCH_PROTOCOLS)
def test_legacy_torch_save(tmp_path, protocol):
    obj = {"t": _tensors(), "s": {1, 2}, "b": b"\x00\xff", "x": "é" * 300}
    path = tmp_path / "legacy.pt"
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    with open_downgraded(path) as view:
        assert canon(torch.load(view, weights_only=True)) == canon(trusted_load(path))


# --- repair ---------------------------------------------------------------------------------------
def _rng_checkpoint(path: Path, protocol: int) -> tuple:
    np.random.seed(7)
    np.random.standard_normal()  # a cached Gaussian in the state
    state = np.random.get_state()
    tensors = {"w": torch.randn(4, 4), "bf": torch.randn(3, dtype=torch.bfloat16)}
    tensors["view"] = tensors["w"][1]
    torch.save({"numpy": state, **tensors, "step": 12, "tags": {"a", "b"}}, path,
               pickle_protocol=protocol)
    return state, tensors


# Protocol 5 is left out here: numpy pickles arrays there as numpy._core.numeric._frombuffer
# (a bytearray), a form repair's numpy rules do not know yet (they keep it, allow-listed).
@pytest.mark.parametrize("protocol", [3, 4])
def test_repair_protocol4_file(tmp_path, protocol):
    path = tmp_path / "rng_state.pth"
    state, tensors = _rng_checkpoint(path, protocol)
    with pytest.raises(Exception, match="Unsupported operand" if protocol == 4 else "numpy"):
        torch.load(path, weights_only=True)
    plan = plan_repair(tmp_path, consumer="torch")
    (fp,) = plan.files
    assert fp.action == "rewrite" and fp.changes[0].rule == "pickle-protocol"
    assert fp.changes[0].found == f"pickle protocol {protocol}"
    result = repair(tmp_path, consumer="torch")
    assert result.exit_code == 0, render_result(result)
    assert result.outcome("rng_state.pth").status == "replaced"
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:
        only_torch_opcodes(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
    new = torch.load(path, weights_only=True)  # plain: nothing allow-listed
    for k, t in tensors.items():
        assert torch.equal(new[k], t) and new[k].dtype == t.dtype
    assert new["view"].untyped_storage().data_ptr() == new["w"].untyped_storage().data_ptr()
    assert new["step"] == 12 and new["tags"] == {"a", "b"}
    assert all(
        np.array_equal(a, b)
        for a, b in zip(numpy_draws(state), numpy_draws(new["numpy"]), strict=True)
    )
    again = repair(tmp_path, consumer="torch")
    assert again.exit_code == 0 and not again.plan.writes


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("to", ["torch", "safetensors"])
def test_repair_pure_protocol4_state_dict(tmp_path, protocol, to):
    sd = {"w": torch.ones(2, 3), "b": torch.arange(4), "h": torch.zeros(2, dtype=torch.bfloat16)}
    torch.save(sd, tmp_path / "pytorch_model.bin", pickle_protocol=protocol)
    result = repair(tmp_path, consumer="torch", to=to)
    assert result.exit_code == 0, render_result(result)
    if to == "torch":
        assert result.outcome("pytorch_model.bin").status == "replaced"
        new = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    else:
        from safetensors.torch import load_file

        assert result.outcome("pytorch_model.bin").status == "converted"
        new = load_file(tmp_path / "model.safetensors")
    assert new.keys() == sd.keys() and all(torch.equal(new[k], sd[k]) for k in sd)


def test_convert_file_reads_protocol4(tmp_path):
    path = tmp_path / "rng.pth"
    state, _ = _rng_checkpoint(path, 4)
    out, conv = convert_file(path)
    assert out["numpy"][0] == "MT19937" and type(out["numpy"][1]) is list
    assert "numpy-rng-state" in {c.rule for c in conv.changes}


def test_undowngradable_file_is_refused_untouched(tmp_path):
    path = tmp_path / "rec.pt"
    torch.save({"t": _recursive_tuple()}, path, pickle_protocol=4)  # POP: no protocol-2 form
    before = path.read_bytes()
    with pytest.raises(TranscodeRefused, match="cannot be rewritten into protocol 2"):
        convert_file(path)
    result = repair(tmp_path, consumer="torch")
    assert result.exit_code == 1
    assert result.outcome("rec.pt").status == "refused"
    assert "POP" in result.outcome("rec.pt").message
    assert path.read_bytes() == before


def test_rewrite_reports_added_globals():
    d = rewrite(pickle.dumps([frozenset({1}), {2}, b"x", bytearray(b"y")], protocol=5))
    assert d.protocol == 5
    assert d.added == {"builtins.frozenset", "builtins.set", "_codecs.encode", "builtins.bytearray"}


# --- malformed input: DowngradeError or a clean protocol-2 stream, nothing else -------------------
_SEEDS = [pickle.dumps(SAFE_OBJECTS["nested"], p) for p in PROTOCOLS] + [
    pickle.dumps({"s": {1, 2}, "f": frozenset({3}), "b": b"xy", "od": SAFE_OBJECTS["ordereddict"]},
                 p) for p in PROTOCOLS] + [
    pickle.dumps([collections.OrderedDict(), {"collections": [1], "OrderedDict": [2]}], p)
    for p in PROTOCOLS]


class _Restricted(pickle._Unpickler):
    """A reference loader safe on any bytes: the pure-Python unpickler (its memo is a dict, so a
    huge memo index cannot allocate gigabytes) resolving only a few harmless names."""

    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
               ("builtins", "frozenset"): frozenset, ("builtins", "bytearray"): bytearray,
               ("_codecs", "encode"): codecs.encode, ("__builtin__", "set"): set,
               ("__builtin__", "frozenset"): frozenset, ("__builtin__", "bytearray"): bytearray}

    def find_class(self, module, name):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not resolved here") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("no persistent ids here")


def restricted_loads(data: bytes):
    return _Restricted(io.BytesIO(data), encoding="bytes").load()


@settings(max_examples=400, deadline=None)
@given(seed=st.sampled_from(_SEEDS), edits=st.lists(st.tuples(st.integers(0, 10 ** 6),
                                                              st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 10 ** 6))
def test_mutated_pickles(seed, edits, cut):
    """Any bytes: DowngradeError, or a protocol-2 stream torch's walker reads; and whenever the
    mutated source loads (restricted loader), the rewrite loads to the same graph."""
    data = bytearray(seed)
    for at, value in edits:
        data[at % len(data)] = value
    data = bytes(data[: max(1, cut % (len(data) + 1))]) if cut % 3 == 0 else bytes(data)
    try:
        out = downgrade(data)
    except DowngradeError:
        return
    only_torch_opcodes(out)
    try:
        ref = canon(restricted_loads(data))
    except Exception:  # the mutated source itself does not load
        return
    assert canon(restricted_loads(out)) == ref
