"""Generators of broken (not malicious, or maliciously *large*) inputs: real checkpoints written
by torch / safetensors / numpy, and zip archives assembled byte by byte (zip bombs, lying
headers, hostile record names) that no zip library would write."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path


def real_files(d: Path) -> dict[str, Path]:
    """One small, valid file of each kind the fuzzers mutate (torch imported here only)."""
    import warnings

    import numpy as np
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    sd = {"layer.weight": torch.arange(12.0).reshape(3, 4), "layer.bias": torch.ones(3),
          "step": torch.tensor(7)}
    out = {}
    out["torch-zip"] = d / "model.pt"
    torch.save(sd, out["torch-zip"])
    out["torch-legacy"] = d / "legacy.pt"
    torch.save(sd, out["torch-legacy"], _use_new_zipfile_serialization=False)
    out["safetensors"] = d / "model.safetensors"
    save_file({k: v for k, v in sd.items()}, out["safetensors"], metadata={"format": "pt"})
    out["pickle"] = d / "state.pkl"
    import pickle

    out["pickle"].write_bytes(pickle.dumps({"epoch": 3, "lr": [0.1, 0.01], "name": "run"},
                                           protocol=2))
    out["numpy"] = d / "arr.npy"
    np.save(out["numpy"], np.arange(10, dtype=np.float32))
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.zeros(4), "extra": {"step": 5}}, checkpoint_id=str(d / "dcp"))
    out["dcp-metadata"] = d / "dcp" / ".metadata"
    out["dcp-shard"] = next((d / "dcp").glob("*.distcp"))
    return out


# ---------------------------------------------------------------------------------------------
# Raw zip writing.
@dataclass
class Record:
    name: str
    data: bytes  # as stored (already compressed when method == 8)
    crc: int
    size: int  # uncompressed size written in the headers (may lie)
    method: int = 0  # 0 stored, 8 deflate


def stored(name: str, data: bytes) -> Record:
    return Record(name, data, zlib.crc32(data), len(data))


def raw_zip(records: list[Record]) -> bytes:
    """Local headers, data, central directory, end record: exactly as given (no checks)."""
    body, central = bytearray(), bytearray()
    for r in records:
        name = r.name.encode("utf-8")
        off = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, r.method, 0, 0x21, r.crc,
                            len(r.data), r.size, len(name), 0) + name + r.data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, r.method, 0, 0x21,
                               r.crc, len(r.data), r.size, len(name), 0, 0, 0, 0, 0, off) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central),
                      len(body), 0)
    return bytes(body + central + end)


def deflated_zeros(n: int, chunk: int = 16 << 20) -> Record:
    """A deflate stream of n zero bytes, built in well under a second per GiB: after a full
    flush the compressor is reset, so the bytes for each zero chunk repeat exactly."""
    assert n % chunk == 0 or n < chunk
    chunk = min(chunk, n)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    piece = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    crc = 0
    for _ in range(n // chunk):
        crc = zlib.crc32(zeros, crc)
    return Record("", piece * (n // chunk) + tail, crc, n, 8)


def bomb(name: str, n: int, declared: int | None = None) -> Record:
    r = deflated_zeros(n)
    r.name = name
    if declared is not None:
        r.size = declared
    return r
