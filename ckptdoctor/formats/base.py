"""What every format module shares: the reader protocol, bounded reads, and a file slice."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..codes import Code
from ..model import FileInfo, Finding, FormatName, ScanState, WeightsOnlyVerdict
from ..pickles.scan import PickleScan
from ..storage import AnyPath
from ..storage.fileobj import SeekableReader

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

HEAD_BYTES = 64
MAX_PICKLE_BYTES = 1 << 30  # a data.pkl larger than this is not read into memory


@dataclass(frozen=True)
class Probe:
    """What sniffing may look at: the first bytes, the name and the size (no full read)."""

    path: AnyPath
    head: bytes
    size: int


class Format(Protocol):
    name: FormatName

    def sniff(self, probe: Probe) -> bool:
        """True when the content (not the extension) says this is the format."""

    def read(self, probe: Probe, rel: str) -> FileInfo:
        """Metadata-only read. Never raises on bad content: problems become findings."""


_STATE_RANK = {ScanState.COMPLETE: 0, ScanState.INCONCLUSIVE: 1, ScanState.FAILED: 2}


def worsen(info: FileInfo, state: ScanState, finding: Finding | None = None) -> None:
    """Lower the file's scan state to `state` (never raise it back), recording why."""
    if _STATE_RANK[state] > _STATE_RANK[info.scan_state]:
        info.scan_state = state
    if finding is not None:
        info.findings.append(finding)


def merge_scans(info: FileInfo, scans: list[PickleScan], rel: str) -> None:
    """Fold several pickle scans (legacy files, npz members, embedded zips) into one FileInfo."""
    seen: set[tuple[str, str]] = {(g.name, g.opcode) for g in info.globals}
    allow: dict[str, None] = dict.fromkeys(info.weights_only.allowlist if info.weights_only else [])
    blockers: dict[str, None] = dict.fromkeys(
        info.weights_only.blockers if info.weights_only else [])
    for scan in scans:
        for g in scan.globals:
            if (g.name, g.opcode) not in seen:
                seen.add((g.name, g.opcode))
                info.globals.append(g)
        allow.update(dict.fromkeys(scan.verdict.allowlist))
        blockers.update(dict.fromkeys(scan.verdict.blockers))
        info.tensors.extend(scan.tensors)
        info.findings.extend(scan.findings)
        worsen(info, scan.state)  # every finding that explains it is in scan.findings
    info.weights_only = WeightsOnlyVerdict(not allow and not blockers, list(allow),
                                           not blockers, list(blockers))
    add_global_findings(info, rel)


def add_global_findings(info: FileInfo, rel: str) -> None:
    """One finding per dangerous / unknown global, and one for the weights_only verdict."""
    dangerous = [g for g in info.globals if g.klass.value == "dangerous"]
    unknown = [g for g in info.globals if g.klass.value == "unknown"]
    if dangerous:
        names = ", ".join(sorted({g.name for g in dangerous}))
        info.findings.append(Code.DANGEROUS_GLOBAL.finding(
            rel, f"references code-executing global(s): {names}",
            hint="do not load this file; it can run code. ckptdoctor never loads it, even "
                 "with --trust", globals=sorted({g.name for g in dangerous})))
    if unknown:
        names = ", ".join(sorted({g.name for g in unknown}))
        info.findings.append(Code.UNKNOWN_GLOBAL.finding(
            rel, f"references global(s) of unknown safety: {names}",
            hint="allow-list them with --allow only if you trust where the file came from",
            globals=sorted({g.name for g in unknown})))
    v = info.weights_only
    if v is None or v.loads or dangerous:
        return
    if v.fixable:
        more = f" and {len(v.allowlist) - 1} more" if len(v.allowlist) > 1 else ""
        info.findings.append(Code.WEIGHTS_ONLY_FAILS.finding(
            rel, f"plain torch.load(weights_only=True) fails: Unsupported global "
                 f"{v.allowlist[0]}{more}",
            hint=f"ckptdoctor repair {rel or '.'}   (or allow-list: "
                 + ", ".join(v.allowlist) + ")", allowlist=v.allowlist))
    else:
        info.findings.append(Code.WEIGHTS_ONLY_UNFIXABLE.finding(
            rel, "torch.load(weights_only=True) fails and no allow-list helps: "
                 + "; ".join(v.blockers[:3]),
            hint=f"ckptdoctor repair {rel or '.'} re-saves it in torch's default format",
            blockers=v.blockers))


# BinaryIO: for type checkers, the interface it has; SeekableReader: tell/seek over `_size`
class FileSlice(SeekableReader, BinaryIO):
    """A read-only, seekable window [start, start+length) of an open binary file.

    zipfile needs a seekable file object; this lets it read a zip embedded in a larger file
    (DCP .distcp shards hold one torch zip per item) without copying it."""

    def __init__(self, fh: io.BufferedReader, start: int, length: int):
        super().__init__()
        self._fh, self._start, self._size, self._pos = fh, start, length, 0

    def readinto(self, buf: Buffer) -> int:
        view = memoryview(buf)
        n = max(0, min(len(view), self._size - self._pos))
        if n == 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


__all__ = ["Probe", "Format", "merge_scans", "worsen", "add_global_findings", "FileSlice",
           "HEAD_BYTES", "MAX_PICKLE_BYTES"]
