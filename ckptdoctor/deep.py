"""`validate --deep`: checks that read every byte, at disk speed and in bounded memory.

Every file is read once, front to back, in a few MiB at a time (stream.py): the same pass
verifies each torch-zip record's CRC32, finds NaN/Inf from the raw bits of every floating
tensor, and hashes the file when a manifest is written or verified. No tensor is built and no
pickle is loaded; which bytes are which tensor comes from the static scan's metadata. Optimizer
shapes are checked from metadata too. Files are streamed by `jobs` threads (zlib, hashlib and
numpy release the GIL)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .codes import Code
from .model import FileInfo, Finding, FormatName, Report, Severity
from .storage import AnyPath
from .stream import FileOutcome  # the outcome of a file's pass lives in stream.py

Progress = Callable[[str, int], None]
# Tensors under these top-level keys are bookkeeping, not parameters or optimizer state: a
# Lightning ModelCheckpoint/EarlyStopping keeps +-inf there on purpose.
BOOKKEEPING = frozenset({"callbacks", "loops", "lr_schedulers", "lr_scheduler", "scheduler",
                         "hyper_parameters", "hparams"})
_STATE_RE = re.compile(r"state\.(\d+)\.(.+)")


MAX_DEFAULT_JOBS = 16  # more threads rarely read faster, and each holds a few MiB
# Check a file's values in a helper thread beside its read+CRC32 (stream_file's `overlap`).
# Off: the bit test costs ~0.14 ms per 4 MiB, less than handing chunks between threads costs
# in CPU (measured in docs/scale.md); on a shared machine CPU time is wall time.
OVERLAP = False


def default_jobs() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, MAX_DEFAULT_JOBS))


def file_path(root: AnyPath, f: FileInfo) -> AnyPath:
    return root if root.is_file() else root / f.path


def deep_eligible(f: FileInfo) -> bool:
    """Broken or dangerous files are never read as tensors (the static findings say why)."""
    return f.format in (FormatName.TORCH_ZIP, FormatName.SAFETENSORS, FormatName.TORCH_LEGACY,
                        FormatName.DCP_SHARD) and not any(
        x.severity is Severity.ERROR for x in f.findings)


def stream_files(root: AnyPath, files: Iterable[FileInfo], *, deep: bool, hash_rels: set[str],
                 jobs: int = 1, progress: Progress | None = None,
                 allow_nonfinite: bool = False) -> list[FileOutcome]:
    """The single pass over `files`: per-file deep findings and sha256 (for rels in hash_rels)."""
    from .stream import chunk_for
    todo = [f for f in files if (deep and deep_eligible(f)) or f.path in hash_rels]
    set_total = getattr(progress, "set_total", None)
    if set_total is not None:  # the bar can show throughput and an ETA
        set_total(sum(f.size for f in todo))

    def one(f: FileInfo) -> FileOutcome:
        return check_file(file_path(root, f), f, deep=deep and deep_eligible(f),
                          want_hash=f.path in hash_rels, progress=progress,
                          allow_nonfinite=allow_nonfinite, overlap=OVERLAP,
                          chunk=chunk_for(jobs))

    if jobs <= 1 or len(todo) <= 1:
        return [one(f) for f in todo]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, todo))


def check_file(path: AnyPath, f: FileInfo, *, deep: bool, want_hash: bool,
               progress: Progress | None = None, allow_nonfinite: bool = False,
               overlap: bool = False, chunk: int | None = None) -> FileOutcome:
    from .stream import CHUNK, nonfinite_counts, plan_regions, stream_file

    before: list[Finding] = []  # found before reading (a zip whose records cannot be located)
    rel = f.path
    regions = []
    legacy_loaded = False  # a legacy file outside the streamable layout: loaded as before
    if deep and f.format == FormatName.TORCH_LEGACY:
        from .stream import legacy_regions
        try:
            planned = legacy_regions(path, f)
        except OSError:
            planned = None
        legacy_loaded = planned is None
        regions = planned or []
    if deep and f.format in (FormatName.TORCH_ZIP, FormatName.SAFETENSORS, FormatName.DCP_SHARD):
        try:
            regions = plan_regions(path, f)
        except Exception as exc:  # zipfile raises many types on hostile input
            before.append(Code.ZIP_CORRUPT.finding(rel, f"cannot verify CRCs: {exc}"))
            deep = False
    out = stream_file(path, rel, regions, want_hash, progress, overlap=overlap,
                      chunk=chunk or CHUNK)
    unreadable = bool(out.findings)  # stream_file's only finding: the file could not be read
    out.findings[:0] = before
    if unreadable or not deep:
        return out
    if legacy_loaded:  # the tar format or an odd layout: small and rare; loaded as before
        out.findings.extend(_legacy_nonfinite(path, f, allow_nonfinite))
        return out
    unrecorded = 0
    for r in regions:
        if r.record is None:
            continue
        if r.header_problem:
            # the static scan leaves the storages' local headers to this pass: the same
            # finding it gives a pickle record's (formats/torch_zip._report_differential)
            out.findings.append(Code.ZIP_ENTRY_FLAGS.finding(
                rel, f"record {r.record!r}: {r.header_problem}",
                hint="torch.save never writes this; torch's reader and zipfile disagree on "
                     "this record. Restore the file from a backup or use an earlier "
                     "checkpoint"))
            continue
        if not r.short and r.crc == 0 and r.computed != 0:
            unrecorded += 1  # torch.save with compute_crc32=False writes 0: not corruption
        elif r.short or r.computed != r.crc:
            out.findings.append(Code.ZIP_CRC.finding(
                rel, f"record {r.record} CRC32 {r.computed:08x} != recorded {r.crc:08x}: "
                     "the bytes changed after torch wrote them",
                hint="restore this file from a backup or use an earlier checkpoint"))
    if unrecorded:
        out.findings.append(Code.CRC_NOT_RECORDED.finding(
            rel, f"{unrecorded} zip record(s) carry no CRC32 (saved with compute_crc32=False): "
                 "their corruption cannot be detected from the file alone",
            hint="record a manifest now: ckptdoctor validate --write-manifest",
            records=unrecorded))
    for name, bad in sorted(nonfinite_counts(regions).items()):
        out.findings.append(nonfinite_finding(rel, name, bad, allow_nonfinite))
    return out


def nonfinite_finding(rel: str, name: str, count: int, allow: bool) -> Finding:
    """NaN/Inf in parameters or optimizer state is an error (resume continues from garbage);
    in bookkeeping (callbacks' best scores...) or with --allow-nonfinite, a warning."""
    bookkeeping = name.split(".", 1)[0] in BOOKKEEPING
    sev = Severity.WARNING if allow or bookkeeping else Severity.ERROR
    return Code.NONFINITE.finding(
        rel, f"{name}: {count} NaN/Inf value(s)", severity=sev, tensor=name, count=count,
        hint="" if sev is Severity.WARNING else
        "training diverged before this save; resume from an earlier checkpoint "
        "(--allow-nonfinite to accept it)")


def _legacy_nonfinite(path: AnyPath, info: FileInfo, allow: bool) -> list[Finding]:
    if not isinstance(path, Path):  # a remote file: the loader chain reads local files only
        return []
    import torch

    from .loaders import LoadError, load_with_chain

    try:
        obj = load_with_chain(path, static=info, rel=info.path).obj
    except LoadError:
        return []
    out = []
    todo: list[tuple[str, Any, int]] = [("", obj, 0)]
    while todo:
        prefix, v, depth = todo.pop()
        if depth > 50:
            continue
        if isinstance(v, dict):
            todo.extend((f"{prefix}.{k}" if prefix else str(k), c, depth + 1) for k, c in v.items())
        elif isinstance(v, (list, tuple)):
            todo.extend((f"{prefix}.{i}" if prefix else str(i), c, depth + 1)
                        for i, c in enumerate(v))
        elif isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                out.append(nonfinite_finding(info.path, prefix, bad, allow))
    return out


# --- optimizer shapes from metadata -----------------------------------------------------------
def _is_weights_file(f: FileInfo) -> bool:
    name = f.path.rsplit("/", 1)[-1]
    if f.format == FormatName.SAFETENSORS:
        return True
    return f.format == FormatName.TORCH_ZIP and bool(re.fullmatch(
        r"(pytorch_model|adapter_model|model)([-_.].*)?\.(bin|pt|pth)", name))


def optimizer_checks(root: AnyPath, report: Report) -> list[Finding]:
    """Per parameter, every state tensor (exp_avg, exp_avg_sq, ...) must have one shape; and the
    optimizer may hold no more states of a shape than the weights beside it hold tensors of it.

    torch numbers optimizer parameters in `param_groups` order (the HF Trainer's decay/no-decay
    split reorders them), and a checkpoint does not record which weight each index is unless
    the optimizer was built from named parameters (`param_names`): then the match is by name,
    otherwise by the multiset of shapes, which never depends on the order."""
    from .layouts.dirview import read_pickle_root
    from .pickles.scan import SymDict, SymList, lookup, top_keys

    out: list[Finding] = []
    by_dir: dict[str, list[FileInfo]] = {}
    for f in report.files:
        by_dir.setdefault(f.path.rpartition("/")[0], []).append(f)
    for _dir, files in sorted(by_dir.items()):
        weights: dict[str, tuple[int, ...]] = {}
        for f in files:
            if _is_weights_file(f) and deep_eligible(f):
                weights.update({t.name: t.shape for t in f.tensors})
        for f in files:
            if f.format != FormatName.TORCH_ZIP or not deep_eligible(f) or not any(
                    _STATE_RE.fullmatch(t.name) for t in f.tensors):
                continue
            sym = read_pickle_root(file_path(root, f))
            if sym is None or not {"state", "param_groups"} <= set(top_keys(sym)):
                continue
            order: list[tuple[int, str | None]] = []
            groups = lookup(sym, "param_groups")
            for g in groups if isinstance(groups, SymList) else []:
                params = lookup(g, "params") if isinstance(g, SymDict) else None
                names = lookup(g, "param_names") if isinstance(g, SymDict) else None
                ids = [p for p in params if isinstance(p, int)] \
                    if isinstance(params, SymList) else []
                nms = [n if isinstance(n, str) else None for n in names] \
                    if isinstance(names, SymList) and len(names) == len(ids) else [None] * len(ids)
                order.extend(zip(ids, nms, strict=True))
            out.extend(_shape_findings(f.path, f, order, weights))
    return out


def _shape_findings(rel: str, f: FileInfo, order: list[tuple[int, str | None]],
                    weights: dict[str, tuple[int, ...]]) -> list[Finding]:
    out = []
    per: dict[int, set[tuple[int, ...]]] = {}
    for t in f.tensors:
        m = _STATE_RE.fullmatch(t.name)
        if m and len(t.shape) > 0:
            per.setdefault(int(m.group(1)), set()).add(tuple(t.shape))
    shapes: dict[int, tuple[int, ...]] = {}
    for pid, seen in sorted(per.items()):
        if len(seen) > 1:
            out.append(Code.OPTIM_SHAPE.finding(
                rel, f"parameter {pid}: optimizer states disagree on shape: {sorted(seen)}"))
        else:
            shapes[pid] = next(iter(seen))
    if not weights or not shapes:
        return out
    named = {pid: name for pid, name in order if name is not None}
    unnamed: list[int] = []
    for pid, shape in sorted(shapes.items()):
        name = named.get(pid)
        if name is not None and name in weights:
            if weights[name] != shape:
                out.append(Code.OPTIM_SHAPE.finding(
                    rel, f"parameter {pid} ({name}): optimizer state {list(shape)} vs weight "
                         f"{list(weights[name])}", parameter=pid, tensor=name))
        else:
            unnamed.append(pid)
    have = Counter(weights.values())
    need = Counter(shapes[p] for p in unnamed)
    for shape, n in sorted(need.items()):
        if n > have.get(shape, 0):
            pids = [p for p in unnamed if shapes[p] == shape]
            out.append(Code.OPTIM_SHAPE.finding(
                rel, f"optimizer state for {n} parameter(s) shaped {list(shape)} (e.g. parameter "
                     f"{pids[0]}); the weights beside it hold {have.get(shape, 0)} tensor(s) of "
                     "that shape: the optimizer belongs to a different model",
                hint="resume with the optimizer file saved together with these weights",
                parameters=pids[:20], shape=list(shape)))
    return out
