"""torch.save's pre-1.6 format: five pickles back to back (magic number, protocol version,
sys_info, the object, the storage keys) followed by each storage as an 8-byte element count and
its raw bytes."""

from __future__ import annotations

from ..codes import Code
from ..model import FileInfo
from ..pickles.scan import SymList, scan_stream
from .base import Probe, merge_scans

# pickle of the int 0x1950a86a20f9469cfc6c: PROTO 2, LONG1 10 bytes
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


class TorchLegacy:
    name = "torch-legacy"

    def sniff(self, probe: Probe) -> bool:
        return probe.head.startswith(LEGACY_MAGIC)

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        with open(probe.path, "rb") as fh:
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
