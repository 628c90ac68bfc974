"""numpy `.npy` (magic, a Python-literal header, raw data; object arrays are a pickle) and
`.npz` (a zip of .npy members)."""

from __future__ import annotations

import ast
import math
import zipfile
from typing import IO, Any

from ..codes import Code
from ..model import FileInfo, FormatName, ScanState, TensorInfo
from ..pickles.scan import scan_stream
from ..storage import open_binary, zip_source
from .base import Probe, merge_scans, worsen
from .torch_zip import is_zip_head

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 20


def _read_npy(fh: IO[bytes], rel: str, info: FileInfo, name: str) -> None:
    magic = fh.read(8)
    if not magic.startswith(NPY_MAGIC) or len(magic) < 8:
        info.findings.append(Code.PICKLE_MALFORMED.finding(rel, f"{name}: not an .npy member"))
        return
    major = magic[6]
    hlen = int.from_bytes(fh.read(2 if major == 1 else 4), "little")
    if hlen > MAX_NPY_HEADER:
        worsen(info, ScanState.INCONCLUSIVE,
               Code.PICKLE_LIMIT.finding(rel, f"{name}: npy header of {hlen} bytes"))
        return
    try:
        header = ast.literal_eval(fh.read(hlen).decode("latin-1"))
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        worsen(info, ScanState.INCONCLUSIVE,
               Code.PICKLE_MALFORMED.finding(rel, f"{name}: bad npy header: {exc}"))
        return
    problem = npy_header_problem(header)
    if problem:
        worsen(info, ScanState.INCONCLUSIVE, Code.NPY_HEADER.finding(
            rel, f"{name}: invalid npy header: {problem}"[:300],
            hint="numpy.load refuses it; the file is damaged or hostile"))
        return
    descr, shape = header["descr"], header["shape"]
    if _may_hold_objects(descr):
        info.findings.append(Code.NPY_OBJECT.finding(
            rel, f"{name}: object array; numpy.load(allow_pickle=True) would unpickle it"))
        scan = scan_stream(fh, f"{rel}!{name}")
        merge_scans(info, [scan], rel)
        return
    n = math.prod(shape)
    itemsize = int(str(descr)[2:]) if str(descr)[2:].isdigit() else 0
    info.tensors.append(TensorInfo(name, str(descr), shape, n * itemsize))


_NPY_KEYS = {"descr", "fortran_order", "shape"}


def npy_header_problem(header: object) -> str:
    """What numpy's own header check (numpy.lib.format) would refuse, or "" when valid: exactly
    the three keys, a bool fortran_order, a shape tuple of non-negative Python ints."""
    if not isinstance(header, dict):
        return f"header is a {type(header).__name__}, not a dict"
    if set(header) != _NPY_KEYS:
        return f"keys {sorted(map(str, header))}, expected {sorted(_NPY_KEYS)}"
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
            type(d) is int and d >= 0 for d in shape):  # bool is no dimension
        return f"shape {shape!r} is not a tuple of non-negative integers"
    if not isinstance(header["fortran_order"], bool):
        return f"fortran_order {header['fortran_order']!r} is not a bool"
    if not isinstance(header["descr"], (str, list)):
        return f"descr {header['descr']!r} is not a dtype description"
    return ""


def _may_hold_objects(descr: str | list[Any]) -> bool:
    """Does numpy.load unpickle this array? It does when np.dtype(descr).hasobject, which
    'O' in the text does not capture ('object', nested structured fields ...). Parsed with
    numpy's own descr_to_dtype (it only builds a dtype; nothing is imported from the file);
    a descr numpy cannot parse is refused by numpy.load before any unpickling."""
    if isinstance(descr, str) and "O" in descr:
        return True
    try:
        import numpy as np
        from numpy.lib.format import descr_to_dtype

        # descr_to_dtype of a string is np.dtype(string); numpy's stubs only declare lists
        dtype = np.dtype(descr) if isinstance(descr, str) else descr_to_dtype(descr)
        return bool(dtype.hasobject)
    except Exception:  # numpy.load raises on it too, before pickle.load
        return False


class Numpy:
    name = FormatName.NUMPY

    def sniff(self, probe: Probe) -> bool:
        return probe.head.startswith(NPY_MAGIC) or (
            probe.path.suffix == ".npz" and is_zip_head(probe.head))

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        if probe.head.startswith(NPY_MAGIC):
            with open_binary(probe.path) as fh:
                _read_npy(fh, rel, info, probe.path.name)
            return info
        try:
            with zipfile.ZipFile(zip_source(probe.path)) as zf:
                for member in zf.infolist():
                    # Streamed from the archive: only the header (and an object array's pickle)
                    # is inflated, never a whole (possibly bomb) member.
                    with zf.open(member) as fh:
                        _read_npy(fh, rel, info, member.filename)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                RuntimeError) as exc:
            worsen(info, ScanState.INCONCLUSIVE,
                   Code.ZIP_CORRUPT.finding(rel, f"npz archive corrupt: {exc}"))
        return info
