"""torch.save's zip format: `<stem>/data.pkl`, `<stem>/data/<key>`, `byteorder`, `version`.

Read with `zipfile` (central directory only) plus a static scan of data.pkl. Torch stores every
record uncompressed and writes CRC32s it never checks; `check_crc` verifies them (--deep)."""

from __future__ import annotations

import contextlib
import io
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from ..codes import Code
from ..model import FileInfo, Finding, FormatName, GlobalClass, GlobalRef, ScanState
from ..pickles.scan import CVE_WEIGHTS_ONLY, PickleScan, current_budget, scan_bytes
from ..storage import AnyPath, is_remote, open_binary, prefetch, zip_source
from .base import MAX_PICKLE_BYTES, Probe, merge_scans, worsen
from .zip_view import Record, TorchView, is_storage_name, torch_records

ZIP_MAGIC = b"PK\x03\x04"
MAX_INFLATE = 256 << 20  # a compressed record is inflated at most this far (zip bombs)
MAX_MEMBER_BYTES = 1 << 30  # all members read while looking for nested payloads, per file
MAX_NESTING = 4  # zips inside zips are opened this deep
PICKLE_SUFFIXES = (".pkl", ".pickle")


class _Budget:
    """Bytes members may still inflate, shared by nested archives (overlapping-entry and
    nested zip bombs multiply work; the budget bounds the total)."""

    def __init__(self, left: int = MAX_MEMBER_BYTES):
        self.left = left


def is_zip_head(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06")


def _bad_name(name: str) -> bool:
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") \
        or (len(name) > 1 and name[1] == ":")


def read_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """Read one record, never more than `cap` bytes (a compressed record may be a bomb).

    Asks for no more than the declared size: zipfile inflates as much as it is asked for
    before cutting to the declared size, so a bomb declaring 100 bytes would otherwise still
    inflate `cap` bytes."""
    with zf.open(info) as fh:
        if info.CRC == 0 and hasattr(fh, "_expected_crc"):
            fh._expected_crc = None  # torch.save(compute_crc32=False) writes 0:
            # "not recorded", not corrupt (torch never checks it; validate --deep reports it)
        return fh.read(max(0, min(cap, info.file_size)))


def data_pkl_name(names: list[str]) -> str | None:
    cands = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    return min(cands, key=len) if cands else None


def data_pkl_path(infos: list[zipfile.ZipInfo]) -> str:
    """The record torch.load unpickles: torch names the archive after the FIRST record's folder
    (PyTorchStreamReader::init) and reads `<folder>/data.pkl`."""
    return infos[0].filename.split("/", 1)[0] + "/data.pkl"


def torch_data_pkls(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """Every record torch.load may unpickle as data.pkl: torch names the archive after the
    FIRST record's folder and looks `<folder>/data.pkl` up case-insensitively (miniz); with
    duplicate names either copy may win, while Python's zipfile returns the last."""
    if not infos or "/" not in infos[0].filename:
        return []
    want = data_pkl_path(infos).lower()
    return [i for i in infos if i.filename.lower() == want]


def scan_zip(source: str | AnyPath | BinaryIO, rel: str,
             fmt: FormatName = FormatName.TORCH_ZIP, *,
             _depth: int = 0, _budget: _Budget | None = None) -> FileInfo:
    """Scan a torch zip (a path, or a file object such as a FileSlice): the records Python's
    zipfile sees, then the records torch's own reader sees (formats/zip_view.py); any
    disagreement makes the file inconclusive and the pickles of both views are scanned."""
    if is_remote(source):
        with open_binary(source) as fh:
            return scan_zip(fh, rel, fmt, _depth=_depth, _budget=_budget)
    budget = _budget or _Budget()
    info = _scan_zipfile_view(source, rel, fmt, _depth, budget)
    if isinstance(source, (str, Path)):
        with open_binary(source) as fh:
            reader_differential(fh, info, rel, budget)
    else:
        reader_differential(source, info, rel, budget)
    return info


def _scan_zipfile_view(source: str | Path | BinaryIO, rel: str, fmt: FormatName, _depth: int,
                       budget: _Budget) -> FileInfo:
    size = _size_of(source)
    info = FileInfo(rel, fmt, size)
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        code = Code.ZIP_TRUNCATED if "central directory" in str(exc) or "not a zip" in str(
            exc).lower() else Code.ZIP_CORRUPT
        info.findings.append(code.finding(
            rel, f"{code.title}: {exc}",
            hint="the save was cut short; torch.load says 'failed finding central directory'."
                 " Use the previous checkpoint (`ckptdoctor latest`)."))
        worsen(info, ScanState.INCONCLUSIVE)
        return info
    except (OSError, ValueError, EOFError, NotImplementedError) as exc:
        worsen(info, ScanState.INCONCLUSIVE,
               Code.ZIP_CORRUPT.finding(rel, f"zip structure corrupt: {exc}"))
        return info
    with zf:
        try:
            infos = zf.infolist()
        except Exception as exc:  # zipfile raises many types on hostile input
            worsen(info, ScanState.INCONCLUSIVE,
                   Code.ZIP_CORRUPT.finding(rel, f"zip structure corrupt: {exc}"))
            return info
        # remote: the local headers of every record but the tensor storages are read next (here
        # and by torch's reader, reader_differential): fetched concurrently, not one by one
        prefetch(source, [(i.header_offset, 30 + len(i.orig_filename.encode()) + 128)
                          for i in infos if not is_storage_name(i.filename)])
        _check_records(infos, size, info, rel)
        declared = _declared_entries(zf)
        if declared is not None and declared != len(infos):
            # zipfile reads the directory by size; torch's miniz trusts the count and fails
            # with "failed reading zip archive".
            info.findings.append(Code.ZIP_CORRUPT.finding(
                rel, f"zip end record announces {declared} records, the central directory "
                     f"holds {len(infos)}; torch.load fails on it"))
        names = [i.filename for i in infos]
        pkl = data_pkl_name(names)
        info.meta["records"] = len(infos)
        candidates = torch_data_pkls(infos)
        if len(candidates) > 1 or (candidates and candidates[0].filename != pkl):
            shown = ", ".join(repr(i.filename) for i in candidates[:4])
            if len(candidates) > 4:
                shown += f", ... ({len(candidates)} records in all)"
            info.findings.append(Code.ZIP_CORRUPT.finding(
                rel, "ambiguous data.pkl: records " + shown
                     + " all match what torch.load looks up (first folder, case-insensitive); "
                       "torch may unpickle a different one than other readers. Every one is "
                       "scanned.", hint="torch.save never writes this; treat the file as hostile"))
        if pkl is None:
            # Not a torch zip after all: scan any pickle-looking members (nested payloads).
            info.format = FormatName.ZIP
            info.findings.append(Code.ZIP_NO_PICKLE.finding(rel, "zip archive has no data.pkl"))
            _scan_members(zf, infos, info, rel, depth=_depth, budget=budget)
            return info
        prefix = pkl[: -len("data.pkl")]
        info.meta["archive_name"] = prefix.rstrip("/")
        byname = {i.filename: i for i in infos}
        for extra in ("byteorder", "version", ".format_version", "storage_alignment"):
            rec = byname.get(prefix + extra)
            if rec is not None and rec.file_size < 64:
                with contextlib.suppress(Exception):  # a metadata record is optional
                    info.meta[extra.lstrip(".")] = read_record(zf, rec, 64).decode(
                        "ascii", "replace").strip()
        if info.meta.get("byteorder") and info.meta["byteorder"] != sys.byteorder:
            info.findings.append(Code.BYTEORDER.finding(
                rel, f"written on a {info.meta['byteorder']}-endian machine"))
        pinfo = byname[pkl]
        # A compressed data.pkl is never torch's; inflate it no further than MAX_INFLATE.
        cap = MAX_PICKLE_BYTES if pinfo.compress_type == zipfile.ZIP_STORED else MAX_INFLATE
        if pinfo.file_size > cap:
            worsen(info, ScanState.INCONCLUSIVE, Code.PICKLE_LIMIT.finding(
                rel, f"data.pkl is {pinfo.file_size} bytes; not scanned"))
            return info
        try:
            data = read_record(zf, pinfo, cap)
        except Exception as exc:  # zipfile raises many types on hostile input
            worsen(info, ScanState.INCONCLUSIVE, Code.ZIP_CORRUPT.finding(
                rel, f"cannot read data.pkl: {exc}"))
            return info
        scan = scan_bytes(data, rel)
        info.meta["protocol"] = scan.protocol
        merge_scans(info, [scan], rel)
        _check_storages(scan, byname, prefix, info, rel)
        _scan_members(zf, [i for i in infos if i is not pinfo], info, rel, nested_only=True,
                      depth=_depth, budget=budget)
    return info


# the end-record parser zipfile itself uses (private: typeshed does not declare it)
_END_REC_DATA: Callable[[IO[bytes]], list[Any] | None] = \
    zipfile._EndRecData  # type: ignore[attr-defined]
_ECD_ENTRIES_TOTAL: int = zipfile._ECD_ENTRIES_TOTAL  # type: ignore[attr-defined]


def _declared_entries(zf: zipfile.ZipFile) -> int | None:
    """The record count the (zip64) end record announces, or None if it cannot be read."""
    fp = zf.fp
    if fp is None:
        return None
    try:
        pos = fp.tell()
        try:
            endrec = _END_REC_DATA(fp)
        finally:
            fp.seek(pos)
        return int(endrec[_ECD_ENTRIES_TOTAL]) if endrec else None
    except Exception:  # a private helper: never let it break the scan
        return None


def _size_of(source: str | Path | BinaryIO) -> int:
    if isinstance(source, (str, Path)):
        return Path(source).stat().st_size
    pos = source.tell()
    end = source.seek(0, 2)
    source.seek(pos)
    return end


def _check_records(infos: list[zipfile.ZipInfo], size: int, info: FileInfo, rel: str) -> None:
    for i in infos:
        if _bad_name(i.filename):
            info.findings.append(Code.ZIP_BAD_NAME.finding(
                rel, f"record name {i.filename!r} is absolute or climbs out with '..'"))
        if i.compress_type != zipfile.ZIP_STORED:
            info.findings.append(Code.ZIP_COMPRESSED.finding(
                rel, f"record {i.filename!r} is compressed (method {i.compress_type}); "
                     "torch never compresses, so this file was not written by torch.save"))
        if i.header_offset + i.compress_size > size:
            info.findings.append(Code.ZIP_CORRUPT.finding(
                rel, f"record {i.filename!r} extends past the end of the file"))


def _check_storages(scan: PickleScan, byname: dict[str, zipfile.ZipInfo], prefix: str,
                    info: FileInfo, rel: str) -> None:
    need: dict[str, int] = {}
    for t in scan.tensors:  # bytes each storage must hold for the tensors viewing it
        if t.storage is None:
            continue
        itemsize = next((s.itemsize for s in scan.storages if s.key == t.storage), 1)
        if t.shape and 0 in t.shape:
            continue
        end = (t.offset or 0) * itemsize + t.nbytes
        need[t.storage] = max(need.get(t.storage, 0), end)
    for s in scan.storages:
        rec = byname.get(f"{prefix}data/{s.key}")
        if rec is None:
            info.findings.append(Code.ZIP_STORAGE_MISSING.finding(
                rel, f"storage record data/{s.key} referenced by data.pkl is missing",
                hint="the file was cut or edited; it cannot be loaded"))
            continue
        if s.nbytes is not None and rec.file_size != s.nbytes and s.dtype != "unknown":
            _storage_numel_mismatch(info, rel, s.key, rec.file_size, s.nbytes)
        want = s.nbytes if s.nbytes is not None else need.get(s.key, 0)
        if rec.file_size < want:
            info.findings.append(Code.ZIP_STORAGE_SHORT.finding(
                rel, f"storage data/{s.key} holds {rec.file_size} bytes, needs {want}"))
    info.meta["storages"] = len(scan.storages)


def _storage_numel_mismatch(info: FileInfo, rel: str, key: str, have: int, declared: int
                            ) -> None:
    """torch.save writes each storage record with exactly numel * itemsize bytes; any other
    size is the CVE-2026-24747 pattern (weights_only memory corruption): dangerous."""
    label = f"<{CVE_WEIGHTS_ONLY}: storage {key} size>"
    info.globals.append(GlobalRef(label, GlobalClass.DANGEROUS, "BINPERSID", label))
    info.findings.append(Code.STORAGE_NUMEL.finding(
        rel, f"storage data/{key} holds {have} bytes, its persistent id declares {declared}: "
             f"torch.save never writes this ({CVE_WEIGHTS_ONLY} pattern)",
        hint="treat the file as hostile; do not load it with any torch version",
        cve=CVE_WEIGHTS_ONLY))


def _scan_members(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], info: FileInfo, rel: str,
                  nested_only: bool = False, depth: int = 0, budget: _Budget | None = None
                  ) -> None:
    """Scan members that are pickles or zips themselves (payloads hidden in nested archives);
    with `nested_only` (the records around a torch data.pkl), tensor storages are not opened.

    Any member named *.pkl is scanned whatever its first bytes (protocol 0/1 pickles have no
    PROTO header); bytes read are charged to `budget` and nesting stops at MAX_NESTING."""
    budget = budget or _Budget()
    scans = []
    for i in infos:
        if i.file_size == 0 or _bad_name(i.filename):
            continue
        if nested_only and is_storage_name(i.filename):
            # a tensor storage (`<archive>/data/<key>`): torch.load only maps its bytes, never
            # unpickles them; skipping it bounds the reads per file (one request each remotely)
            continue
        try:
            with zf.open(i) as fh:
                # torch never checks CRCs; --deep does (a private ZipExtFile attribute)
                fh._expected_crc = None  # type: ignore[attr-defined]
                head = fh.read(8)
        except Exception as exc:  # an unreadable record: not vouched for
            worsen(info, ScanState.INCONCLUSIVE, Code.ZIP_CORRUPT.finding(
                rel, f"record {i.filename!r} cannot be read: {exc}"[:300]))
            continue
        nested_zip = head.startswith(ZIP_MAGIC)
        is_pickle = head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5
        named_pickle = i.filename.lower().endswith(PICKLE_SUFFIXES)
        if nested_only and not nested_zip and not named_pickle:
            continue
        if not (nested_zip or is_pickle or named_pickle):
            continue
        if nested_zip and depth >= MAX_NESTING:
            worsen(info, ScanState.INCONCLUSIVE, Code.PICKLE_LIMIT.finding(
                rel, f"{i.filename}: zip nested more than {MAX_NESTING} deep; not scanned"))
            continue
        cap = min(MAX_INFLATE, budget.left)
        spent = current_budget()
        if spent is not None and spent.exhausted:
            worsen(info, ScanState.INCONCLUSIVE, Code.PICKLE_LIMIT.finding(
                rel, f"{i.filename} and later records not scanned: this file already hit a "
                     f"scan cap ({spent.exhausted})"))
            break
        if cap <= 0:
            worsen(info, ScanState.INCONCLUSIVE, Code.PICKLE_LIMIT.finding(
                rel, f"{i.filename}: members already inflated {MAX_MEMBER_BYTES} bytes; the "
                     "rest are not scanned"))
            break
        data = b""  # drop the previous member before inflating the next
        try:
            data = read_record(zf, i, cap)
        except Exception as exc:  # zipfile raises many types on hostile input
            worsen(info, ScanState.INCONCLUSIVE, Code.ZIP_CORRUPT.finding(
                rel, f"record {i.filename!r} cannot be read: {exc}"[:300]))
            continue
        budget.left -= len(data)
        if i.file_size > cap:
            worsen(info, ScanState.INCONCLUSIVE)
            info.findings.append(Code.PICKLE_LIMIT.finding(
                rel, f"{i.filename}: {i.file_size} bytes inflated; only the first {cap} are "
                     "scanned"))
        if nested_zip:
            inner = scan_zip(io.BytesIO(data), f"{rel}!{i.filename}", _depth=depth + 1,
                             _budget=budget)
            info.globals.extend(g for g in inner.globals if g not in info.globals)
            info.findings.extend(inner.findings)
            worsen(info, inner.scan_state)
        else:
            scans.append(scan_bytes(data, f"{rel}!{i.filename}"))
    if scans:
        merge_scans(info, scans, rel)


def _zipfile_records(fh: BinaryIO) -> list[tuple[str, int]] | None:
    """(name, header offset) of every record as Python's zipfile reads them, or None."""
    try:
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            return [(i.filename, i.header_offset) for i in zf.infolist()]
    except Exception:  # zipfile raises many types on hostile input
        return None


def _torch_record_bytes(fh: BinaryIO, rec: Record, budget: _Budget) -> bytes | None:
    """A record's bytes as torch's reader gets them: stored or inflated (capped), no CRC check.
    None when torch's reader could not read it either (unsupported method, no local header)."""
    if rec.data_offset is None or rec.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return None
    fh.seek(rec.data_offset)
    if rec.method == zipfile.ZIP_STORED:
        return fh.read(min(rec.csize, MAX_PICKLE_BYTES))
    cap = max(0, min(MAX_INFLATE, budget.left))
    raw = fh.read(min(rec.csize, MAX_PICKLE_BYTES))
    try:
        data = zlib.decompressobj(-15).decompress(raw, cap)
    except zlib.error:
        return None
    budget.left -= len(data)
    return data


def reader_differential(fh: BinaryIO, info: FileInfo, rel: str, budget: _Budget) -> None:
    """Compare the records torch's reader locates with zipfile's; on any disagreement the file
    is inconclusive (CK220 / CK221) and every pickle torch's reader would find is scanned too
    (its globals are reported: a payload only torch sees is still dangerous)."""
    size = _size_of(fh)
    view: TorchView = torch_records(fh, size, storage_headers=False)
    theirs = _zipfile_records(fh)
    structural: list[str] = []
    if view.error:
        if theirs is not None:
            structural.append(f"torch's reader refuses the archive ({view.error}) while "
                              "zipfile reads it")
        _report_differential(info, rel, structural, [])
        return
    ours = [(r.name, r.header_offset) for r in view.records]
    if theirs is None:
        structural.append("zipfile cannot read the archive; torch's reader can")
    elif [n for n, _ in theirs] == [n for n, _ in ours] and theirs != ours:
        shift = {b - a for (_, a), (_, b) in zip(ours, theirs, strict=True)}
        structural.append(
            f"offset fix-up: torch's reader takes the central directory at the declared byte "
            f"{view.cdir_offset}; zipfile shifts the records by {sorted(shift)[:3]} bytes, so "
            "the two read different bytes")
    elif theirs != ours:
        structural.append(
            f"two central directories: zipfile sees {len(theirs)} record(s) "
            f"({_names(theirs)}), torch's reader (declared offset {view.cdir_offset}) sees "
            f"{len(ours)} ({_names(ours)})")
    per_record = [p for r in view.records for p in r.problems(size)]
    pickles = view.data_pkls()
    taken = {id(r) for r in pickles}  # a set: thousands of duplicate records stay linear
    pickles += [r for r in view.records if id(r) not in taken
                and r.name.lower().endswith(PICKLE_SUFFIXES)]
    found: list[tuple[Record, bytes]] = []
    for rec in pickles:
        if rec.method != zipfile.ZIP_STORED and not (structural or per_record):
            continue  # zipfile read the same bytes; never inflate a record twice for nothing
        spent = current_budget()
        if spent is not None and spent.exhausted:
            break  # the file is inconclusive already
        data = _torch_record_bytes(fh, rec, budget)
        if data is None:
            continue
        # a recorded CRC of 0 is torch.save(compute_crc32=False): "not recorded", and zipfile
        # is told not to check it either (read_record), so both readers read the same bytes
        if rec.method == zipfile.ZIP_STORED and rec.csize <= MAX_PICKLE_BYTES \
                and rec.crc != 0 and zlib.crc32(data) != rec.crc:
            per_record.append(f"record {rec.name!r}: CRC32 {zlib.crc32(data):08x} != recorded "
                              f"{rec.crc:08x} (zipfile refuses it; torch's reader does not "
                              "check CRCs)")
        found.append((rec, data))
    if not structural and not per_record:
        return
    scans = []
    for rec, data in found:
        scan = scan_bytes(data, f"{rel}!{rec.name}")
        scan.tensors = []  # tensors are listed from the zipfile view only
        scans.append(scan)
    _report_differential(info, rel, structural, per_record)
    if scans:
        info.findings = [f for f in info.findings if f.code not in (
            Code.DANGEROUS_GLOBAL.code, Code.UNKNOWN_GLOBAL.code,
            Code.WEIGHTS_ONLY_FAILS.code, Code.WEIGHTS_ONLY_UNFIXABLE.code)]
        merge_scans(info, scans, rel)  # re-adds the per-global findings over both views


def _names(records: list[tuple[str, int]]) -> str:
    shown = ", ".join(repr(n) for n, _ in records[:4])
    return shown + (", ..." if len(records) > 4 else "")


def _report_differential(info: FileInfo, rel: str, structural: list[str],
                         per_record: list[str]) -> None:
    hint = ("torch.save never writes this; what torch.load would unpickle differs from what "
            "other tools show. Treat the file as hostile")
    if structural:
        worsen(info, ScanState.INCONCLUSIVE, Code.ZIP_READERS_DIFFER.finding(
            rel, "; ".join(structural)[:600], hint=hint, problems=structural))
    if per_record:
        worsen(info, ScanState.INCONCLUSIVE, Code.ZIP_ENTRY_FLAGS.finding(
            rel, "; ".join(per_record[:4])[:600], hint=hint, problems=per_record))


def check_crc(path: Path, rel: str, chunk: int = 8 << 20) -> list[Finding]:
    """Read every record and compare its CRC32 with the one torch wrote (deep check)."""
    out: list[Finding] = []
    try:
        with zipfile.ZipFile(zip_source(path)) as zf, open_binary(path) as raw:
            for i in zf.infolist():
                if i.compress_type != zipfile.ZIP_STORED:
                    continue  # reported elsewhere; never inflated here
                # Data starts after the local header: 30 bytes + name + extra (local lengths).
                raw.seek(i.header_offset + 26)
                n, m = int.from_bytes(raw.read(2), "little"), int.from_bytes(raw.read(2), "little")
                raw.seek(i.header_offset + 30 + n + m)
                crc, left = 0, i.compress_size
                while left > 0:
                    block = raw.read(min(chunk, left))
                    if not block:
                        break
                    crc = zlib.crc32(block, crc)
                    left -= len(block)
                if left or crc != i.CRC:
                    out.append(Code.ZIP_CRC.finding(
                        rel, f"record {i.filename} CRC32 {crc:08x} != recorded {i.CRC:08x}: "
                             "the bytes changed after torch wrote them",
                        hint="restore this file from a backup or use an earlier checkpoint"))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        out.append(Code.ZIP_CORRUPT.finding(rel, f"cannot verify CRCs: {exc}"))
    return out


class TorchZip:
    name = FormatName.TORCH_ZIP

    def sniff(self, probe: Probe) -> bool:
        if not is_zip_head(probe.head):
            return False
        return probe.path.suffix != ".npz"

    def read(self, probe: Probe, rel: str) -> FileInfo:
        return scan_zip(probe.path, rel)
