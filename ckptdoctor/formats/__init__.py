"""On-disk formats, recognised by content (never by extension alone).

One module per format; FORMATS is the one ordered registry `detect_file` walks: the first
format whose `sniff` accepts the first bytes reads the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .. import storage
from ..codes import Code
from ..model import FileInfo, FormatName, ScanState
from ..pickles.scan import file_budget
from .base import HEAD_BYTES, Format, Probe
from .dcp import DcpMetadataFormat, DcpShard
from .numpy_file import Numpy
from .pickle_file import PickleFile, check_polyglot, hidden_pickle
from .safetensors_file import Safetensors
from .text_file import Empty, Json, Text
from .torch_legacy import TorchLegacy
from .torch_zip import TorchZip

FORMATS: tuple[Format, ...] = (
    Empty(), DcpShard(), Numpy(), TorchZip(), TorchLegacy(), DcpMetadataFormat(), Safetensors(),
    PickleFile(), Json(), Text(),
)
FORMAT_NAMES = tuple(FormatName)
# Formats that are pickles themselves (scanned as such); every other file is checked for being
# a pickle too (a polyglot), since torch.load unpickles anything that is not a zip or a tar.
PICKLE_FORMATS = frozenset({FormatName.TORCH_ZIP, FormatName.TORCH_LEGACY, FormatName.PICKLE,
                            FormatName.DCP_METADATA, FormatName.ZIP, FormatName.DCP_SHARD,
                            FormatName.EMPTY, FormatName.UNKNOWN})
# Extensions that promise a format: when content does not match, read it as that format anyway
# so the user hears what is wrong with it (a cut safetensors file has no valid header to sniff).
PROMISED: dict[str, Format] = {
    ".safetensors": Safetensors(), ".pt": TorchZip(), ".pth": TorchZip(), ".bin": TorchZip(),
    ".ckpt": TorchZip(), ".pkl": PickleFile()}


def detect_file(path: storage.AnyPath, rel: str = "") -> FileInfo:
    """Identify and read one file from metadata. Never raises: problems become findings, and
    an internal error in a reader is a CK121 finding (scan state `failed`) for this file only.
    All scans of the file share one budget (pickles.scan.file_budget). A remote file
    (storage.RemotePath) whose reads failed (changed, timed out, budget) is that one finding
    and nothing else: what was read before the failure is never mixed in."""
    try:
        with file_budget():
            info = _detect_file(path, rel)
            if info.format not in PICKLE_FORMATS and info.size:
                check_polyglot(path, info)
    except storage.RemoteReadError:
        info = FileInfo(rel, FormatName.UNKNOWN, 0)  # the session recorded why (below)
    except Exception as exc:  # one hostile file must not end a directory run
        return FileInfo(rel, FormatName.UNKNOWN, _size(path), scan_state=ScanState.FAILED,
                        findings=[
            Code.SCAN_FAILED.finding(rel, f"the scan could not run: {type(exc).__name__}: "
                                          f"{exc}"[:300],
                                     hint="not loadable until it scans; please report this")])
    return remote_failure(path, rel, info) if storage.is_remote(path) else info


def remote_failure(path: storage.RemotePath, rel: str, info: FileInfo) -> FileInfo:
    """`info`, or, when a ranged read of the remote file failed, a FileInfo holding only
    that failure (scan state failed: never loadable, never judged from partial bytes)."""
    failure = path.session.failures.get(path.path)
    if failure is None:
        return info
    code, message = failure
    return FileInfo(rel, FormatName.UNKNOWN, _size(path), scan_state=ScanState.FAILED,
                    findings=[code.finding(rel, message)])


def _size(path: storage.AnyPath) -> int:
    try:
        return storage.stat(path).st_size
    except OSError:
        return 0


def _detect_file(path: storage.AnyPath, rel: str = "") -> FileInfo:
    try:
        st = storage.stat(path)
    except FileNotFoundError:
        kind = Code.SYMLINK_LOOP if not storage.is_remote(path) and os.path.islink(path) \
            else Code.PATH_MISSING
        return FileInfo(rel, FormatName.UNKNOWN, 0, findings=[kind.finding(rel, kind.title)])
    except OSError as exc:
        code = Code.SYMLINK_LOOP if exc.errno == 40 else Code.UNREADABLE
        return FileInfo(rel, FormatName.UNKNOWN, 0,
                        findings=[code.finding(rel, f"{code.title}: {exc.strerror}")])
    if not stat.S_ISREG(st.st_mode):
        return FileInfo(rel, FormatName.UNKNOWN, 0, findings=[Code.NOT_REGULAR.finding(rel)])
    try:
        with storage.open_binary(path) as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        return FileInfo(rel, FormatName.UNKNOWN, st.st_size,
                        findings=[Code.UNREADABLE.finding(rel, f"cannot read: {exc.strerror}")])
    probe = Probe(path if storage.is_remote(path) else Path(path), head, st.st_size)
    try:
        fmt = next((f for f in FORMATS if f.sniff(probe)), None)
        if (fmt is None or fmt.name == FormatName.TEXT) and st.st_size and \
                hidden_pickle(probe.path):
            fmt = PickleFile()
    except OSError as exc:
        return FileInfo(rel, FormatName.UNKNOWN, st.st_size,
                        findings=[Code.UNREADABLE.finding(rel, f"cannot read: {exc.strerror}")])
    if (fmt is None or fmt.name == FormatName.TEXT) and probe.path.suffix in PROMISED and \
            st.st_size:
        fmt = PROMISED[probe.path.suffix]
    if fmt is None:
        return FileInfo(rel, FormatName.UNKNOWN, st.st_size)
    try:
        return fmt.read(probe, rel)
    except OSError as exc:
        return FileInfo(rel, fmt.name, st.st_size,
                        findings=[Code.UNREADABLE.finding(rel, f"cannot read: {exc.strerror}")])
    except (RecursionError, MemoryError, ValueError, EOFError) as exc:
        return FileInfo(rel, fmt.name, st.st_size, scan_state=ScanState.INCONCLUSIVE,
                        findings=[Code.PICKLE_MALFORMED.finding(
                            rel,
                            f"could not parse as {fmt.name}: {type(exc).__name__}: {exc}"[:300])])


__all__ = ["FORMATS", "FORMAT_NAMES", "detect_file"]
