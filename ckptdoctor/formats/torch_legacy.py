"""torch.save's pre-1.6 format: five pickles back to back (magic number, protocol version,
sys_info, the object, the storage keys) followed by each storage as an 8-byte element count and
its raw bytes."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path
from typing import IO

from ..codes import Code
from ..model import FileInfo, FormatName, WeightsOnlyVerdict
from ..pickles.scan import STORAGE_DTYPES, Glob, PickleScan, SymList, scan_stream
from ..storage import AnyPath, open_binary, zip_source
from .base import Probe, merge_scans

MAX_TAR_MEMBERS = 10_000
MAX_TAR_ITEMS = 10_000_000  # storages / tensors a tar member may declare

# pickle of the int 0x1950a86a20f9469cfc6c: PROTO 2, LONG1 10 bytes
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def is_tar(path: AnyPath) -> bool:
    """A tar header block (checksum verified): torch.load tries the tar format first."""
    try:
        with open_binary(path) as fh:
            block = fh.read(tarfile.BLOCKSIZE)
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (OSError, tarfile.TarError, ValueError):
        return False
    return True


def _scan_counted(fh: IO[bytes], rel: str, member: str, scans: list[PickleScan]) -> int | None:
    """Scan one pickle that holds a count; the count, or None when it is not a sane int."""
    scans.append(scan_stream(fh, f"{rel}!{member}"))
    n = scans[-1].root
    if not scans[-1].complete or not isinstance(n, int) or not 0 <= n <= MAX_TAR_ITEMS:
        return None
    return n


def _scan_tar_member(fh: IO[bytes], name: str, rel: str, scans: list[PickleScan]) -> bool:
    """Scan every pickle torch's legacy_load reads from one tar member, skipping the raw bytes
    between them exactly as torch does. False when the layout could not be followed."""
    if name == "pickle":
        scans.append(scan_stream(fh, f"{rel}!pickle"))
        return scans[-1].complete
    n = _scan_counted(fh, rel, name, scans)
    if n is None:
        return False
    for _ in range(n):
        scans.append(scan_stream(fh, f"{rel}!{name}"))
        args = scans[-1].root
        if not scans[-1].complete or not isinstance(args, tuple) or len(args) < 3:
            return False
        if name == "storages":  # (key, location, storage_type); then int64 count + data
            stype = args[2].match.rpartition(".")[2] if isinstance(args[2], Glob) else ""
            itemsize = STORAGE_DTYPES.get(stype, (None, None))[1]
            raw = fh.read(8)
            if itemsize is None or len(raw) < 8:
                return False
            fh.seek(struct.unpack("<q", raw)[0] * itemsize, 1)
        else:  # tensors: int32 ndim, 4 bytes, ndim sizes, ndim strides, int64 offset
            raw = fh.read(8)
            if len(raw) < 8:
                return False
            ndim = struct.unpack("<i", raw[:4])[0]
            if not 0 <= ndim <= 64:
                return False
            fh.seek(16 * ndim + 8, 1)
    if name == "storages":  # storage views follow the storages
        scans.append(scan_stream(fh, f"{rel}!storages"))
        return scans[-1].complete
    return True


def read_tar(probe: Probe, rel: str) -> FileInfo:
    """torch's oldest format, a tar of 'storages', 'tensors' and 'pickle'. weights_only=True
    refuses it; weights_only=False unpickles all three members, so all are scanned."""
    info = FileInfo(rel, FormatName.TORCH_LEGACY, probe.size, meta={"container": "tar"})
    scans: list[PickleScan] = []
    unverified: list[str] = []
    try:
        src = zip_source(probe.path)
        with (tarfile.open(src, mode="r:") if isinstance(src, (str, Path))
              else tarfile.open(fileobj=src, mode="r:")) as tar:
            members = []
            for m in tar:
                members.append(m)
                if len(members) >= MAX_TAR_MEMBERS:
                    unverified.append(f"more than {MAX_TAR_MEMBERS} members")
                    break
            for m in members:
                if m.name not in ("storages", "tensors", "pickle"):
                    continue
                if not m.isreg():
                    unverified.append(f"{m.name} is not a regular member")
                    continue
                fh = tar.extractfile(m)
                if fh is None or not _scan_tar_member(fh, m.name, rel, scans):
                    unverified.append(m.name)
    except (tarfile.TarError, OSError, ValueError, EOFError, OverflowError) as exc:
        unverified.append(f"tar structure: {exc}")
    if not scans and not unverified:  # a tar, but not torch's: torch.load unpickles nothing
        return FileInfo(rel, FormatName.UNKNOWN, probe.size, meta={"container": "tar"})
    refusal = PickleScan(verdict=WeightsOnlyVerdict(False, [], False, [
        "legacy .tar format: torch.load(weights_only=True) refuses it"]))
    merge_scans(info, [*scans, refusal], rel)
    if unverified:
        info.findings.append(Code.PICKLE_MALFORMED.finding(
            rel, "legacy tar checkpoint whose pickles could not all be scanned: "
                 + "; ".join(unverified[:5]),
            hint="torch.load(weights_only=False) would unpickle them; do not load it"))
    return info


class TorchLegacy:
    name = FormatName.TORCH_LEGACY

    def sniff(self, probe: Probe) -> bool:
        return probe.head.startswith(LEGACY_MAGIC) or is_tar(probe.path)

    def read(self, probe: Probe, rel: str) -> FileInfo:
        if not probe.head.startswith(LEGACY_MAGIC):
            return read_tar(probe, rel)
        info = FileInfo(rel, self.name, probe.size)
        with open_binary(probe.path) as fh:
            scans = []
            for _ in range(5):  # magic, protocol, sys_info, object, storage keys
                scans.append(scan_stream(fh, rel))
                if not scans[-1].complete:
                    break
            merge_scans(info, scans, rel)  # every one of the five is scanned for payloads
            if len(scans) < 5 or not scans[-1].complete:
                info.findings.append(Code.LEGACY_TRUNCATED.finding(
                    rel, "legacy torch file ends inside its pickles"))
                return info
            obj = scans[3]
            keys = [str(k) for k in scans[4].root] if isinstance(scans[4].root, SymList) else []
            sizes = {s.key: s.itemsize for s in obj.storages}
            for key in keys:
                raw = fh.read(8)
                if len(raw) < 8:
                    info.findings.append(Code.LEGACY_TRUNCATED.finding(
                        rel, f"file ends before storage {key}"))
                    return info
                nbytes = int.from_bytes(raw, "little") * sizes.get(key, 1)
                here = fh.tell()
                if here + nbytes > probe.size:
                    info.findings.append(Code.LEGACY_TRUNCATED.finding(
                        rel, f"storage {key} needs {nbytes} bytes, only {probe.size - here} left"))
                    return info
                fh.seek(here + nbytes)
            info.meta.update(protocol=obj.protocol, storages=len(keys))
            missing = {s.key for s in obj.storages} - set(keys)
            for key in sorted(missing):
                info.findings.append(Code.ZIP_STORAGE_MISSING.finding(
                    rel, f"storage {key} referenced by the pickle is not in the file"))
        return info
