"""What every integration does after a save and before a resume.

after_save(path): static validate (no torch import, metadata only), write the sha256 manifest
(directories) and a completion marker, optionally the RNG state in a weights_only-safe form,
and return one log line. gate(path): the pre-resume validate; raises CheckpointRejected with
the first error finding, so a bad checkpoint stops the run at once, with the code and the fix,
instead of a stack trace minutes into the load."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_writer, write_bytes
from ..errors import CheckpointRejected
from ..model import Finding, Severity, sorted_findings

log = logging.getLogger("ckptdoctor")

MARKER = ".ckptdoctor-complete.json"  # beside the files of a directory checkpoint
FILE_MARKER_SUFFIX = ".ckptdoctor-complete.json"  # <file>.ckptdoctor-complete.json
MARKER_FORMAT = "ckptdoctor.complete/1"
RNG_FILE = "ckptdoctor_rng_state_{rank}.pt"
RNG_FORMAT = "ckptdoctor.rng/1"


@dataclass
class SaveRecord:
    """What after_save did: `ok` (no error finding), the findings, the line it logged."""

    path: str
    ok: bool
    findings: list[Finding] = field(default_factory=list)
    line: str = ""
    marker: str | None = None
    rng_file: str | None = None


def marker_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / MARKER if p.is_dir() else p.with_name(p.name + FILE_MARKER_SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def after_save(path: str | os.PathLike, *, rng_state: bool = False, rank: int = 0,
               consumer: str = "framework", logger: logging.Logger | None = None) -> SaveRecord:
    """Validate a checkpoint just written, record its manifest and completion marker."""
    from ..validate import ValidateOptions, validate

    p = Path(path)
    rng_file = str(save_rng_state(p if p.is_dir() else p.parent, rank)) if rng_state else None
    report, findings = validate(p, ValidateOptions(consumer=consumer, write_manifest=True))
    errors = [f for f in sorted_findings(findings) if f.severity >= Severity.ERROR]
    rec = SaveRecord(str(p), not errors, findings, rng_file=rng_file)
    if not errors:
        doc: dict[str, Any] = {
            "format": MARKER_FORMAT, "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "layout": report.layout.name, "step": report.layout.step,
            "files": len(report.files), "verdict": report.extra.get("verdict", "")}
        if p.is_file():  # a single file has no directory manifest: the marker records it
            doc["sha256"], doc["size"] = _sha256(p), p.stat().st_size
        mp = marker_path(p)
        write_bytes(mp, json.dumps(doc, indent=1, sort_keys=True).encode())
        rec.marker = str(mp)
        warn = sum(1 for f in findings if f.severity is Severity.WARNING)
        rec.line = (f"ckptdoctor: saved {p} ok ({report.layout.name}, step {report.layout.step}, "
                    f"{len(report.files)} file(s), {warn} warning(s)); manifest and marker written")
        (logger or log).info(rec.line)
    else:
        first = errors[0]
        rec.line = (f"ckptdoctor: saved {p} is NOT resumable: {first.code} {first.path or '.'}: "
                    f"{first.message} (+{len(errors) - 1} more)")
        (logger or log).error(rec.line)
    return rec


def gate(path: str | os.PathLike, *, consumer: str = "framework", require_marker: bool = False,
         allow: tuple[str, ...] = ()) -> list[Finding]:
    """The pre-resume gate: returns the findings when resumable, raises CheckpointRejected
    otherwise. With `require_marker`, a checkpoint after_save never marked complete is refused
    too (it was written by a run that died mid-save, or never checked)."""
    from ..codes import Code
    from ..validate import ValidateOptions, validate

    p = Path(path)
    if not p.exists():
        raise CheckpointRejected(str(p), [Code.PATH_MISSING.finding(str(p), "no such file or "
                                                                             "directory")])
    _report, findings = validate(p, ValidateOptions(consumer=consumer, allow=tuple(allow)))
    errors = [f for f in sorted_findings(findings) if f.severity >= Severity.ERROR]
    if file_marker_stale(p):
        errors.append(Code.MANIFEST_MISMATCH.finding(
            p.name, "file differs from the sha256 recorded when it was saved",
            hint="restore it from a backup or resume from an earlier checkpoint"))
    if require_marker and not marker_path(p).is_file():
        errors.append(Code.GATE_FAILED.finding(
            str(p), "no completion marker: the save did not finish (or was never checked)",
            hint="resume from the newest checkpoint that has one: ckptdoctor latest RUN_DIR"))
    if errors:
        raise CheckpointRejected(str(p), errors)
    return findings


def file_marker_stale(p: Path) -> bool:
    """A single-file checkpoint whose marker records a different sha256."""
    mp = marker_path(p)
    if not p.is_file() or not mp.is_file():
        return False
    try:
        doc = json.loads(mp.read_text("utf-8"))
    except (OSError, ValueError):
        return True
    return doc.get("size") != p.stat().st_size or doc.get("sha256") != _sha256(p)


# --- RNG state that torch.load(weights_only=True) loads -----------------------------------------
def rng_state() -> dict[str, Any]:
    """python / numpy / torch RNG states as lists, ints, str and uint8 tensors only."""
    import torch

    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {"format": RNG_FORMAT,
                           "python": [version, list(internal), gauss],
                           "cpu": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = [str(name), [int(k) for k in keys], int(pos), int(has_gauss),
                        float(cached)]
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def save_rng_state(directory: str | os.PathLike, rank: int = 0) -> Path:
    """Write this process's RNG state as ckptdoctor_rng_state_<rank>.pt (atomic)."""
    import torch

    target = Path(directory) / RNG_FILE.format(rank=rank)
    with atomic_writer(target) as fh:
        torch.save(rng_state(), fh)
    return target


def load_rng_state(directory: str | os.PathLike, rank: int = 0) -> dict[str, Any]:
    import torch

    return torch.load(Path(directory) / RNG_FILE.format(rank=rank), weights_only=True)


def restore_rng_state(directory: str | os.PathLike, rank: int = 0) -> None:
    """Set python / numpy / torch RNGs from the file save_rng_state wrote."""
    import torch

    st = load_rng_state(directory, rank)
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in st:
        import numpy as np

        name, keys, pos, has_gauss, cached = st["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["cpu"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
