"""safetensors: 8-byte little-endian header length N, N bytes of JSON, then tensor data.

Parsed here rather than with `safetensors.safe_open` because safe_open stops at the first
problem with one message; a checkpoint doctor must name every bad entry, never trust the header
length before checking it against the file, and stay torch-free."""

from __future__ import annotations

import json
import math
from typing import Any

from ..codes import Code
from ..model import FileInfo, FormatName, TensorInfo
from ..storage import AnyPath, open_binary
from .base import Probe

MAX_HEADER = 100_000_000  # safetensors' own cap
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
    "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}
TORCH_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64", "C64": "complex64",
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_header(path: AnyPath, rel: str, size: int) -> tuple[dict[str, Any] | None, int, FileInfo]:
    """Parse and check a safetensors header; returns (header or None, data start, info)."""
    info = FileInfo(rel, FormatName.SAFETENSORS, size)
    if size < 8:
        info.findings.append(Code.ST_HEADER_SMALL.finding(
            rel, f"{size} bytes: too small to hold the 8-byte header length (safetensors says "
                 "'header too small')", hint="the file was cut short; restore or re-save it"))
        return None, 0, info
    with open_binary(path) as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER or n + 8 > size or n < 2:
            info.findings.append(Code.ST_HEADER_LENGTH.finding(
                rel, f"header length {n} is invalid for a {size}-byte file (safetensors says "
                     "'invalid header length')", hint="the file is truncated or not safetensors"))
            return None, 0, info
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        info.findings.append(Code.ST_HEADER_JSON.finding(rel, f"header is not valid JSON: {exc}"))
        return None, 0, info
    return header, 8 + n, info


def check_entries(header: dict[str, Any], start: int, info: FileInfo, rel: str) -> None:
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        info.findings.append(Code.ST_ENTRY.finding(rel, "__metadata__ must map str to str"))
        meta = None
    info.meta["metadata"] = meta or {}
    if not meta or meta.get("format") != "pt":
        info.findings.append(Code.ST_NO_FORMAT.finding(
            rel, "no __metadata__ format=pt; transformers refuses such files "
                 "('does not contain the valid metadata')"))
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in DTYPE_SIZES or not isinstance(shape, list) or not all(
                    isinstance(d, int) and d >= 0 for d in shape) \
                    or not all(isinstance(x, int) and x >= 0 for x in (begin, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            info.findings.append(Code.ST_ENTRY.finding(rel, f"entry {name!r} is malformed"))
            continue
        numel = math.prod(shape)
        nbytes = numel * DTYPE_SIZES[dtype]
        if end - begin != nbytes or end < begin:
            info.findings.append(Code.ST_OFFSETS.finding(
                rel, f"{name}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                     f"{dtype}{shape} needs {nbytes}"))
        spans.append((begin, end, name))
        info.tensors.append(TensorInfo(name, TORCH_NAMES.get(dtype, dtype.lower()), tuple(shape),
                                       nbytes, None, begin))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin < cursor:
            info.findings.append(Code.ST_OFFSETS.finding(
                rel, f"{name}: data overlaps the previous tensor (offset {begin} < {cursor})"))
        elif begin > cursor:
            info.findings.append(Code.ST_OFFSETS.finding(
                rel, f"{name}: {begin - cursor} bytes of gap before it (offset {begin})"))
        cursor = max(cursor, end)
    data_len = info.size - start
    if cursor != data_len:
        what = "truncated" if cursor > data_len else "has trailing bytes"
        info.findings.append(Code.ST_COVERAGE.finding(
            rel, f"tensor data ends at {cursor} but the file holds {data_len} data bytes: "
                 f"file {what} (safetensors says 'incomplete metadata, file not fully covered')",
            hint="the save was cut short; use the previous checkpoint"))
    info.meta["data_start"] = start


class Safetensors:
    name = FormatName.SAFETENSORS

    def sniff(self, probe: Probe) -> bool:
        h = probe.head
        if len(h) < 9:
            return False
        n = int.from_bytes(h[:8], "little")
        return 2 <= n <= MAX_HEADER and h[8:9] == b"{"

    def read(self, probe: Probe, rel: str) -> FileInfo:
        header, start, info = read_header(probe.path, rel, probe.size)
        if header is not None:
            check_entries(header, start, info, rel)
        return info
