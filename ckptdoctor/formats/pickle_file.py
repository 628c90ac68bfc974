"""A plain pickle of any protocol (`.pkl`, accelerate's custom state, `training_args.bin` from
very old torch, ...). Several pickles may follow each other; all are scanned."""

from __future__ import annotations

import pickletools
import re

from ..codes import Code
from ..model import FileInfo, FormatName, ScanState
from ..pickles.scan import PickleScan, ScanLimits, scan_stream
from ..storage import AnyPath, open_binary
from .base import Probe, add_global_findings, merge_scans, worsen

MAX_STACKED = 64
# First opcodes a protocol 0/1 pickle can start with (no PROTO opcode there).
_P0_FIRST = frozenset(b"(]}cI(LFSVNd)l.eGJKMXUTqhgps")


def looks_like_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    return bool(head) and head[0] in _P0_FIRST and _parses_a_little(head)


def _parses_a_little(head: bytes) -> bool:
    """A protocol-0 guess: the first opcodes of the head must decode."""
    import io

    try:
        for n, _ in enumerate(pickletools.genops(io.BytesIO(head))):
            if n >= 2:
                return True
    except Exception:  # a partial head often ends mid-opcode
        return False
    return False


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SHADOW_LIMITS = ScanLimits(max_opcodes=1_000_000)


def hidden_pickle(path: AnyPath) -> bool:
    """Is a file that sniffs as text or nothing a pickle after all?

    torch.load unpickles every file that is neither a zip nor a tar, whatever its name, so a
    payload may hide behind a first opcode the head-sniff does not expect (a 300-byte STRING, a
    SHORT_BINBYTES full of NULs, a .json or .safetensors name). The first pickle is walked
    symbolically (it stops at the first opcode that cannot parse, which for real text or binary
    data is within a few bytes); any global naming a Python-looking path, a scan limit, or a
    pickle that parses to its STOP with any global at all (an EXT code or a computed name
    included), or a FRAME-boundary differential makes it a pickle. Random bytes hit a lone EXT
    opcode about once in a hundred files but almost never parse to a STOP, which keeps noise out
    of the findings."""
    with open_binary(path) as fh:
        scan = scan_stream(fh, "", _SHADOW_LIMITS)
    if any(f.code == Code.PICKLE_LIMIT.code for f in scan.findings):
        return True
    if scan.complete and scan.globals:
        return True
    # A FRAME-boundary parser differential is deliberate (random bytes would need a FRAME
    # whose 8-byte length lands inside the file): evidence even though the scan stopped.
    return any(_IDENT.fullmatch(g.name) or g.opcode == "FRAME" for g in scan.globals)


def check_polyglot(path: AnyPath, info: FileInfo) -> None:
    """Is this non-pickle file (safetensors, numpy, JSON, text) ALSO a pickle? torch.load
    unpickles every file that is neither a zip nor a tar, and the unpickler runs each opcode as
    it reads it, so a prefix that reaches a global, a STOP or a scan cap is a second reading
    of the file: it is inconclusive (CK122) and that reading's globals are reported."""
    with open_binary(path) as fh:
        scan = scan_stream(fh, info.path, _SHADOW_LIMITS)
    # A prefix "reaches a global" only when the name is one an import could resolve (plain
    # text starting with "c" reads as GLOBAL 'heckpoint notes ...': nothing to import).
    importable = any(_IDENT.fullmatch(g.name) or g.opcode == "FRAME" for g in scan.globals)
    if not (scan.complete or importable or scan.limit_hit):
        return
    seen = {(g.name, g.opcode) for g in info.globals}
    info.globals.extend(g for g in scan.globals if (g.name, g.opcode) not in seen)
    worsen(info, ScanState.INCONCLUSIVE, Code.POLYGLOT.finding(
        info.path, f"the file is also a pickle ({scan.opcodes} opcodes"
                   + (", to its STOP" if scan.complete else "") + "): torch.load("
                   "weights_only=False) or pickle.load would unpickle it"
                   + (": " + ", ".join(sorted({g.name for g in scan.globals})[:5])
                      if scan.globals else ""),
        hint="no writer produces such a file by accident; treat it as hostile",
        globals=sorted({g.name for g in scan.globals})))
    add_global_findings(info, info.path)


class PickleFile:
    name = FormatName.PICKLE

    def sniff(self, probe: Probe) -> bool:
        return looks_like_pickle(probe.head)

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        scans: list[PickleScan] = []
        with open_binary(probe.path) as fh:
            while len(scans) < MAX_STACKED and fh.tell() < probe.size:
                scans.append(scan_stream(fh, rel))
                if not scans[-1].complete:
                    break
        info.meta["protocol"] = scans[0].protocol if scans else None
        info.meta["pickles"] = len(scans)
        merge_scans(info, scans, rel)
        return info
