"""Every read of a pickle-based file in convert/ goes through here.

Whole files go through the loader chain (`loaders.load_with_chain`: weights_only, then the
allow-list with stand-ins, then --trust, never with a code-executing global), with mmap for
torch zips. Tensor items embedded in DCP shards are loaded with plain weights_only=True from a
file slice; DCP BytesIO items (which DCP itself would unpickle with weights_only=False) are
written to a private temp file and go through the chain like any other file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..codes import Code
from ..model import FormatName
from .common import MAPPED, ConvertError, Options, fail


def load_torch(path: Path, opts: Options, rel: str | None = None, mmap: bool = True) -> Any:
    """Load a torch file through the chain. Raises ConvertError with the chain's findings."""
    from ..loaders import LoadError, load_with_chain
    from ..standins import AllowListError

    rel = str(path) if rel is None else rel
    try:
        result = load_with_chain(path, allow=opts.allow, trust=opts.trust, map_location="cpu",
                                 mmap=mmap, rel=rel)
    except LoadError as exc:
        raise fail(rel, f"cannot load {rel} safely: "
                        f"{exc.findings[0].message if exc.findings else exc}",
                   hint=exc.findings[0].hint if exc.findings else "",
                   extra=[*exc.findings, *_static_errors(path, rel)]) from None
    except AllowListError as exc:
        raise fail(rel, str(exc)) from None
    if mmap and result.static is not None and result.static.format == FormatName.TORCH_ZIP:
        MAPPED.add(path)
    return result.obj


def _static_errors(path: Path, rel: str) -> list:
    """The static scan's error findings (e.g. CK101 dangerous global) to explain a refusal."""
    from ..formats import detect_file
    from ..model import Severity

    return [f for f in detect_file(path, rel).findings if f.severity is Severity.ERROR]


def load_pickle_bytes(data: bytes | memoryview, rel: str, opts: Options) -> Any:
    """Load a pickled item (a torch.save zip held in memory) through the chain."""
    fd, name = tempfile.mkstemp(prefix="ckptdoctor-item-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return load_torch(Path(name), opts, rel=rel, mmap=False)
    finally:
        os.unlink(name)


def _slice_class():
    from ..formats.base import FileSlice

    class DirectSlice(FileSlice):
        """FileSlice reading straight into the caller's buffer: torch.load's zip reader asks
        for a whole record at once, and a temporary bytes object would double the peak."""

        def readinto(self, buf) -> int:
            n = max(0, min(len(buf), self._size - self._pos))
            if n == 0:
                return 0
            self._fh.seek(self._start + self._pos)
            got = self._fh.readinto(memoryview(buf).cast("B")[:n])
            self._pos += got or 0
            return got or 0

    return DirectSlice


def load_tensor_item(fh: Any, offset: int, length: int, rel: str) -> Any:
    """One tensor item of a DCP shard: an embedded torch.save zip at (offset, length)."""
    import torch

    FileSlice = _slice_class()

    fh.seek(offset)
    if fh.read(4) != b"PK\x03\x04":
        raise fail(rel, f"{rel}: item at offset {offset} is not a torch.save zip (DCP written "
                        "with another serialization format or an extension)")
    try:
        obj = torch.load(FileSlice(fh, offset, length), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on bad input
        raise ConvertError(Code.CONVERT_FAILED.finding(
            rel, f"{rel}: tensor item at offset {offset} does not load with weights_only=True: "
                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")) from None
    if not isinstance(obj, torch.Tensor):
        raise fail(rel, f"{rel}: item at offset {offset} holds {type(obj).__name__}, not a tensor")
    return obj
