"""The opcode walk: a pickle's (opcode, argument) pairs as the C unpickler reads them, with the
faults a malformed or parser-differential stream raises."""

from __future__ import annotations

import codecs
import pickletools
from collections.abc import Iterator
from typing import IO, Any


class Fault(Exception):
    pass


class Desync(Fault):
    """The C unpickler would read these bytes differently than pickletools: a deliberate
    parser differential, so the globals it loads cannot be known statically."""


# Opcodes whose argument is a text line that pickletools.genops parses more strictly than the C
# unpickler does: INT/LONG are base 0 there ('0x10', '0o7'), STRING is decoded with the
# unpickler's encoding (torch.load passes utf-8; genops insists on ASCII), GLOBAL/INST names are
# utf-8 without escape processing. A scanner that stopped where genops fails would never see a
# payload placed after such an opcode, while pickle.load runs it.
_LINE_OPS = {b"I": "INT", b"L": "LONG", b"S": "STRING", b"c": "GLOBAL", b"i": "INST",
             b"P": "PERSID"}


def _lenient_line_op(stream: IO[bytes]) -> tuple[str, Any] | None:
    """Parse one text-line opcode the way CPython's _pickle does; None if it would fail too."""
    name = _LINE_OPS.get(stream.read(1))
    line = stream.readline()
    if name is None or not line.endswith(b"\n"):
        return None
    text = line[:-1]
    try:
        if name == "INT" and text in (b"00", b"01"):
            return name, text == b"01"
        if name in ("INT", "LONG"):
            t = text[:-1] if name == "LONG" and text.endswith(b"L") else text
            try:
                return name, int(t, 0)
            except ValueError:  # C strtol(base 0) also takes leading-zero octal ('010')
                return name, int(t, 8)
        if name == "STRING":
            if len(text) < 2 or text[:1] != text[-1:] or text[:1] not in (b"'", b'"'):
                return None
            raw = codecs.escape_decode(text[1:-1])[0]
            try:
                return name, raw.decode("utf-8")
            except UnicodeDecodeError:
                return name, raw.decode("latin-1")
        if name == "PERSID":
            return name, text.decode("ascii")
        line2 = stream.readline()  # GLOBAL / INST: module line, then name line
        if not line2.endswith(b"\n"):
            return None
        return name, f"{text.decode('utf-8')} {line2[:-1].decode('utf-8')}"
    except (ValueError, UnicodeDecodeError):
        return None


def iter_opcodes(stream: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """(opcode name, argument) pairs of one pickle, as pickletools.genops gives them, but
    re-synchronised after the text-line opcodes genops rejects and the unpickler accepts, and
    refusing opcodes that straddle the end of a FRAME.

    genops reads frames as a flat byte stream. CPython's C unpickler does not: a read that
    runs past the end of the current frame drops the frame's remaining bytes and continues
    after the frame (from an unbuffered source such as the BytesIO torch.load uses for
    data.pkl), so `FRAME n ... c<coll|os>\nsystem\n` is 'collos.system' to genops and
    'os.system' to pickle.load. pickle.dumps never writes such a pickle; the scan stops with a
    malformed-pickle fault instead of reporting names the unpickler would not use."""
    frame_end: int | None = None
    while True:
        start = stream.tell()
        try:
            for op, arg, pos in pickletools.genops(stream):
                end = stream.tell()
                frame_end = _check_frame(op.name, arg, pos, end, frame_end)
                yield op.name, arg
                if op.name == "STOP":
                    return
                start = end
            return
        except (ValueError, UnicodeDecodeError):
            end = stream.tell()
            stream.seek(start)
            recovered = _lenient_line_op(stream)
            if recovered is None:
                stream.seek(end)
                raise
        frame_end = _check_frame(recovered[0], recovered[1], start, stream.tell(), frame_end)
        yield recovered


def _check_frame(name: str, arg: Any, start: int | None, end: int,
                 frame_end: int | None) -> int | None:
    """The end of the current frame after this opcode; Fault if the opcode crosses it."""
    if start is None:
        return frame_end
    # the end of the frame this opcode starts in (None: it starts outside any frame)
    current = frame_end if frame_end is not None and start < frame_end else None
    if current is not None and end > current:
        raise Desync(f"opcode {name} at byte {start} crosses the end of its FRAME at "
                     f"{frame_end}; the C unpickler would read it differently")
    if name == "FRAME":
        new_end = end + int(arg)
        if current is not None and new_end > current:
            raise Desync(f"FRAME at byte {start} runs past the end of the enclosing FRAME at "
                         f"{frame_end}; the C unpickler would read it differently")
        return new_end
    return current
