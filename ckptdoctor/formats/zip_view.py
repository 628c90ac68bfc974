"""The zip records torch's own reader sees, located the way it locates them.

torch.load reads a zip checkpoint with caffe2's PyTorchStreamReader over miniz, not with
Python's `zipfile`, and the two disagree on hostile input:

- miniz takes the central directory at the offset the end-of-central-directory (EOCD) record
  DECLARES; `zipfile` takes the directory that ends just before the EOCD and "fixes up" every
  record offset by the difference. A file with two central directories is two archives.
- miniz reads flags, method and sizes from the central directory only and finds the data
  through the local header's name and extra lengths; it never compares the local header's name
  with the central one and (as built into torch) never checks CRC32s. `zipfile` refuses a name
  mismatch, a CRC mismatch, and encryption / patch flag bits in either header.
- PyTorchStreamReader names the archive after the first central-directory record's folder and
  looks `<folder>/data.pkl` up case-insensitively.

`torch_records` re-implements only that locating logic (pure parsing, nothing inflated here);
formats/torch_zip.py compares it with the `zipfile` view and scans the pickles of both."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

EOCD_SIG = b"PK\x05\x06"
EOCD64_LOCATOR_SIG = b"PK\x06\x07"
EOCD64_SIG = b"PK\x06\x06"
CDIR_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"
MAX_COMMENT = 0xFFFF
MAX_RECORDS = 1_000_000
FLAG_ENCRYPTED = 0x0001
FLAG_PATCH = 0x0020
FLAG_STRONG_ENCRYPTION = 0x0040
FLAG_BITS_REFUSED = FLAG_ENCRYPTED | FLAG_PATCH | FLAG_STRONG_ENCRYPTION


@dataclass
class Record:
    """One central-directory record as miniz reads it, plus what its local header says."""

    name: str
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    header_offset: int  # as declared (miniz adds nothing to it)
    local_name: str | None = None  # None: no valid local header there
    local_flags: int = 0
    data_offset: int | None = None  # first data byte (after the LOCAL name and extra)
    local_read: bool = True  # False: the local header was not read (a storage, statically)

    def problems(self, size: int) -> list[str]:
        """Why `zipfile` would refuse this record or read it differently than torch."""
        out = []
        if not self.local_read:
            bits = self.flags & FLAG_BITS_REFUSED
            return [f"record {self.name!r}: flag bits 0x{bits:04x} (encrypted / patch data)"
                    ] if bits else []
        if self.local_name is None:
            out.append(f"record {self.name!r}: no local header at offset {self.header_offset}")
            return out
        if self.local_name != self.name:
            out.append(f"record {self.name!r}: local header names it {self.local_name!r}")
        bits = (self.flags | self.local_flags) & FLAG_BITS_REFUSED
        if bits:
            out.append(f"record {self.name!r}: flag bits 0x{bits:04x} (encrypted / patch data)")
        if self.data_offset is not None and self.data_offset + self.csize > size:
            out.append(f"record {self.name!r}: data runs past the end of the archive")
        return out


@dataclass
class TorchView:
    """What torch's reader sees: records in central-directory order, or why it fails."""

    records: list[Record] = field(default_factory=list)
    cdir_offset: int = 0  # declared
    cdir_size: int = 0
    eocd_offset: int = 0  # where the end-of-central-directory record is
    error: str = ""  # non-empty: torch's reader refuses the archive

    def data_pkls(self) -> list[Record]:
        """The records PyTorchStreamReader may unpickle as data.pkl (first record's folder,
        case-insensitive lookup; with duplicate names either copy may win)."""
        if not self.records or "/" not in self.records[0].name:
            return []
        want = self.records[0].name.split("/", 1)[0].lower() + "/data.pkl"
        return [r for r in self.records if r.name.lower() == want]


def _u16(b: bytes, o: int) -> int:
    value: int = struct.unpack_from("<H", b, o)[0]
    return value


def _u32(b: bytes, o: int) -> int:
    value: int = struct.unpack_from("<I", b, o)[0]
    return value


def _u64(b: bytes, o: int) -> int:
    value: int = struct.unpack_from("<Q", b, o)[0]
    return value


def _read_at(fh: BinaryIO, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Apply a zip64 extended-information field (id 1): only the 0xFFFFFFFF fields follow."""
    i = 0
    while i + 4 <= len(extra):
        hid, hlen = _u16(extra, i), _u16(extra, i + 2)
        body = extra[i + 4:i + 4 + hlen]
        if hid == 1:
            j = 0
            vals = []
            for v in (usize, csize, offset):
                if v == 0xFFFFFFFF and j + 8 <= len(body):
                    vals.append(_u64(body, j))
                    j += 8
                else:
                    vals.append(v)
            return vals[0], vals[1], vals[2]
        i += 4 + hlen
    return usize, csize, offset


def is_storage_name(name: str) -> bool:
    """`<archive>/data/<key>`: a tensor storage record as torch.save names it (decimal keys)."""
    parts = name.split("/")
    return len(parts) == 3 and parts[1] == "data" and parts[2].isdigit()


def torch_records(fh: BinaryIO, size: int, *, storage_headers: bool = True) -> TorchView:
    """Locate every record the way miniz (torch's reader) does; never raises on bad input.

    storage_headers=False leaves the local headers of tensor storage records unread (their
    data offsets unknown): torch never unpickles them, so the static scan, which must cost a
    bounded number of reads per file however many tensors it holds (one ranged request each
    on object storage), skips them; `--deep` reads every one with its bytes (check_crc)."""
    view = TorchView()
    try:
        tail_len = min(size, 22 + MAX_COMMENT)
        tail = _read_at(fh, size - tail_len, tail_len)
        i = tail.rfind(EOCD_SIG)  # miniz scans back from the end: the last signature wins
        while i != -1 and i + 22 > len(tail):
            i = tail.rfind(EOCD_SIG, 0, i)
        if i == -1:
            view.error = "failed finding central directory"
            return view
        eocd = tail[i:i + 22]
        view.eocd_offset = size - tail_len + i
        entries, cdir_size, cdir_ofs = _u16(eocd, 10), _u32(eocd, 12), _u32(eocd, 16)
        # miniz follows a zip64 locator right before the end record to the zip64 record at
        # the offset the locator declares, and then uses the zip64 values (torch.save always
        # writes both); zipfile instead reads the zip64 record at a fixed distance.
        loc = _read_at(fh, view.eocd_offset - 20, 20) if view.eocd_offset >= 20 else b""
        if len(loc) == 20 and loc[:4] == EOCD64_LOCATOR_SIG:
            eocd64 = _read_at(fh, _u64(loc, 8), 56)
            if len(eocd64) == 56 and eocd64[:4] == EOCD64_SIG:
                entries, cdir_size, cdir_ofs = _u64(eocd64, 32), _u64(eocd64, 40), _u64(eocd64, 48)
        view.cdir_offset, view.cdir_size = cdir_ofs, cdir_size
        if entries > MAX_RECORDS:
            view.error = f"{entries} records announced"
            return view
        if cdir_ofs + cdir_size > size or cdir_size < entries * 46:
            view.error = "central directory out of bounds"
            return view
        cdir = _read_at(fh, cdir_ofs, cdir_size)
        pos = 0
        for _ in range(entries):
            if cdir[pos:pos + 4] != CDIR_SIG or pos + 46 > len(cdir):
                view.error = "invalid central directory record"
                return view
            flags, method = _u16(cdir, pos + 8), _u16(cdir, pos + 10)
            crc, csize, usize = _u32(cdir, pos + 16), _u32(cdir, pos + 20), _u32(cdir, pos + 24)
            n, m, k = _u16(cdir, pos + 28), _u16(cdir, pos + 30), _u16(cdir, pos + 32)
            offset = _u32(cdir, pos + 42)
            raw_name = cdir[pos + 46:pos + 46 + n]
            extra = cdir[pos + 46 + n:pos + 46 + n + m]
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
            view.records.append(Record(name, flags, method, crc, csize, usize, offset))
            pos += 46 + n + m + k
        for rec in view.records:
            if not storage_headers and is_storage_name(rec.name):
                rec.local_read = False
                continue
            local = _read_at(fh, rec.header_offset, 30)
            if len(local) < 30 or local[:4] != LOCAL_SIG:
                continue
            ln, lm = _u16(local, 26), _u16(local, 28)
            lname = _read_at(fh, rec.header_offset + 30, ln)
            rec.local_flags = _u16(local, 6)
            rec.local_name = lname.decode("utf-8" if rec.local_flags & 0x800 else "cp437",
                                          "replace")
            rec.data_offset = rec.header_offset + 30 + ln + lm
    except (OSError, struct.error, ValueError, OverflowError) as exc:
        view.error = f"unreadable: {exc}"
    return view


__all__ = ["Record", "TorchView", "torch_records", "is_storage_name", "FLAG_BITS_REFUSED"]
