"""Small sidecars: JSON (configs, indexes, trainer_state), text (`latest`, trackers), empty."""

from __future__ import annotations

import json

from ..codes import Code
from ..model import FileInfo, FormatName
from .base import Probe

MAX_TEXT = 64 << 20


def _decodes(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a cut multi-byte char at the end of the head is fine
        return exc.start >= len(head) - 3
    return b"\x00" not in head


class Empty:
    name = FormatName.EMPTY

    def sniff(self, probe: Probe) -> bool:
        return probe.size == 0

    def read(self, probe: Probe, rel: str) -> FileInfo:
        return FileInfo(rel, self.name, 0, findings=[Code.EMPTY_FILE.finding(
            rel, "zero-byte file (torch.load raises EOFError; a save was interrupted)",
            hint="use the previous checkpoint, or re-save this file")])


class Json:
    name = FormatName.JSON

    def sniff(self, probe: Probe) -> bool:
        return probe.head.lstrip()[:1] in (b"{", b"[") and _decodes(probe.head)

    def read(self, probe: Probe, rel: str) -> FileInfo:
        info = FileInfo(rel, self.name, probe.size)
        if probe.size > MAX_TEXT:
            return info
        try:
            json.loads(probe.path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            info.findings.append(Code.JSON_BAD.finding(rel, f"invalid JSON: {exc}"))
        return info


class Text:
    name = FormatName.TEXT

    def sniff(self, probe: Probe) -> bool:
        return _decodes(probe.head)

    def read(self, probe: Probe, rel: str) -> FileInfo:
        return FileInfo(rel, self.name, probe.size)
