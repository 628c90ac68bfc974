"""`ckptdoctor diff A B`, as a library: what differs between two checkpoints of any mix of
formats (torch .bin/.pt, safetensors (sharded), DCP, DeepSpeed ZeRO, Lightning, HF Trainer and
Accelerate directories).

    from ckptdoctor.diff import diff
    report = diff("run/checkpoint-2", "run/checkpoint-4")
    report.equal, report.moved(), report.findings

Every file is read through the readers in convert/ (and so through the loader chain:
weights_only first, never an unrestricted unpickler). Entries are sorted into sections
(weights, optimizer, scheduler, rng, other); tensors are compared one pair at a time, in
chunks, so peak memory stays near the largest tensor pair (times --jobs), not the checkpoint.

`resume_equivalent=True` asks a stricter question: would B continue training exactly as A
would? Same entries, bit-identical tensors and dtypes, equal step / scheduler / RNG / every
other value, the same per-rank files. Differences are Findings (CK9xx, see codes.py)."""

from __future__ import annotations

import enum
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codes import Code
from .errors import DiffError
from .model import SCHEMA_VERSION, Finding, Severity, sorted_findings

CHUNK_ELEMENTS = 1 << 18  # elements per comparison step (2 MB per float64 temporary)


class Section(str, enum.Enum):
    WEIGHTS = "weights"
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    RNG = "rng"
    OTHER = "other"


# top-level keys of a checkpoint dict -> the section they hold (Lightning, torchtitan, DCP
# saves, hand-written training loops)
_SECTION_KEYS: dict[str, Section] = {
    **{k: Section.WEIGHTS for k in ("state_dict", "model", "model_state_dict", "module",
                                    "model_state", "net", "weights")},
    **{k: Section.OPTIMIZER for k in ("optimizer", "optimizer_states", "optimizer_state_dict",
                                      "optim", "optimizer_state", "optimizers")},
    **{k: Section.SCHEDULER for k in ("lr_scheduler", "lr_schedulers", "scheduler",
                                      "schedulers", "scheduler_state_dict")},
    **{k: Section.RNG for k in ("rng", "rng_state", "rng_states", "rng_tracker_states",
                                "random_rng_state", "np_rng_state", "torch_rng_state",
                                "cuda_rng_state")},
}
# files beside the weights in a training directory (HF Trainer, Accelerate)
_TRAINING_FILES: tuple[tuple[re.Pattern, Section], ...] = (
    (re.compile(r"^optimizer.*\.(pt|bin)$"), Section.OPTIMIZER),
    (re.compile(r"^scheduler.*\.(pt|bin)$"), Section.SCHEDULER),
    (re.compile(r"^(rng_state.*\.pth|random_states_\d+\.pkl)$"), Section.RNG),
)
_RANK_FILE = re.compile(r"(?:rng_state_|random_states_|zero_pp_rank_|mp_rank_|^__|rank_?)(\d+)")
_MOMENT = re.compile(r"(?:^|\.)state\.(.+)\.(exp_avg|exp_avg_sq|max_exp_avg_sq|momentum_buffer"
                     r"|step)$")
_STEP_KEYS = ("global_step", "global_steps", "iteration", "step")


# --- reading a side ---------------------------------------------------------------------------
@dataclass
class Side:
    path: Path
    kind: str
    tensors: dict[Section, dict[str, Any]] = field(default_factory=dict)  # -> TensorEntry
    values: dict[Section, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    closers: list[Any] = field(default_factory=list, repr=False)

    def add(self, section: Section, key: str, value: Any) -> None:
        from .convert.common import TensorEntry

        bucket = self.tensors if isinstance(value, TensorEntry) else self.values
        store = bucket.setdefault(section, {})
        other = (self.values if bucket is self.tensors else self.tensors).get(section, {})
        if key in store or key in other:
            raise _unreadable(self.path, f"{key} appears twice in {section.value}")
        store[key] = value

    def keys(self, section: Section) -> set[str]:
        return set(self.tensors.get(section, {})) | set(self.values.get(section, {}))

    def close(self) -> None:
        for c in self.closers:
            c.close()


def _unreadable(path: Any, message: str, hint: str = "") -> DiffError:
    return DiffError(Code.DIFF_UNREADABLE.finding(str(path), message, hint))


def open_side(path: str | os.PathLike, allow: tuple[str, ...] = (), trust: bool = False) -> Side:
    """Read the structure of one checkpoint (tensors stay lazy). Raises DiffError."""
    from .convert.common import ConvertError, Options

    path = Path(path)
    opts = Options("diff", allow=tuple(allow), trust=trust)
    try:
        return _open(path, opts)
    except ConvertError as exc:
        cause = next((f for f in exc.findings[1:] if f.severity is Severity.ERROR), exc.finding)
        raise _unreadable(path, f"{cause.code} {cause.message}", cause.hint) from None


def _open(path: Path, opts: Any) -> Side:
    from .convert.loading import load_torch
    from .convert.sources import detect, safetensors_files, torch_files

    kind = detect(path)
    side = Side(path, kind)
    root = path if path.is_dir() else path.parent
    if kind == "safetensors":
        _add_safetensors(side, safetensors_files(path))
    elif kind == "torch":
        for f in torch_files(path):
            side.files.append(f.name)
            _add_object(side, load_torch(f, opts), str(f))
    elif kind == "lightning":
        side.files.append(path.name)
        _add_object(side, load_torch(path, opts), str(path))
    elif kind == "dcp":
        _add_dcp(side, path, opts)
    elif kind == "deepspeed":
        _add_deepspeed(side, path, opts)
    else:
        raise _unreadable(path, f"diff does not read {kind} checkpoints",
                          hint="convert it first (ckptdoctor convert ... --to torch)")
    if path.is_dir():
        _add_training_files(side, root, opts)
    side.files = sorted(set(side.files))
    return side


def _add_safetensors(side: Side, files: list[Path]) -> None:
    from .convert.st_emit import read_extras
    from .convert.st_io import SafetensorsFile

    aliases: dict[str, str] = {}
    for p in files:
        f = SafetensorsFile(p)
        side.closers.append(f)
        side.files.append(p.name)
        for name in f.names():
            side.add(Section.WEIGHTS, name, f.entry(name))
        aliases.update({k: v for k, v in f.metadata.items() if k != "format"})
    weights = side.tensors.setdefault(Section.WEIGHTS, {})
    for alias, kept in aliases.items():  # tied tensors stored once come back under both names
        if alias not in weights and kept in weights:
            weights[alias] = weights[kept]
    stem = files[0].name.split(".")[0].split("-0")[0]
    extra = files[0].parent / f"{stem}.extra.json"
    if extra.is_file():
        for key, value in read_extras(extra).items():
            _add_value(side, Section.OTHER, key, value)


def _add_value(side: Side, section: Section, key: str, value: Any) -> None:
    from .convert.common import tensor_entry
    import torch

    if isinstance(value, torch.Tensor):
        side.add(section, key, tensor_entry(key, value))
    elif isinstance(value, Mapping) and value and all(isinstance(k, (str, int)) for k in value):
        for k, v in value.items():  # DCP's naming: nested plain containers join with '.'
            _add_value(side, section, f"{key}.{k}", v)
    elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            _add_value(side, section, f"{key}.{i}", v)
    else:
        side.add(section, key, value)


def _classify(key: Any) -> Section | None:
    return _SECTION_KEYS.get(str(key).lower()) if isinstance(key, str) else None


def _add_object(side: Side, obj: Any, origin: str, role: Section | None = None,
                prefix: str = "") -> None:
    """Flatten a loaded object into sections: by `role` when the file says what it is (e.g.
    optimizer.pt), else by its top-level keys; a dict of tensors with no known key is weights."""
    from .convert.sources import flatten

    import torch

    def put(section: Section, key: str, value: Any) -> None:
        _add_value(side, section, f"{prefix}{key}", value)

    if role is not None:
        for key, value in flatten(obj, origin):
            put(role, key, value)
        return
    if not isinstance(obj, Mapping) or not any(_classify(k) for k in obj):
        for key, value in flatten(obj, origin):
            put(Section.WEIGHTS if isinstance(value, torch.Tensor) else Section.OTHER, key, value)
        return
    weight_keys = [k for k in obj if _classify(k) is Section.WEIGHTS]
    for top, value in obj.items():
        section = _classify(top) or Section.OTHER
        if section is Section.WEIGHTS and len(weight_keys) == 1 and isinstance(value, Mapping):
            for key, leaf in flatten(value, origin):  # the state dict's own keys
                put(section, key, leaf)
        else:
            for key, leaf in flatten({top: value}, origin):
                put(section, key, leaf)


def _add_dcp(side: Side, path: Path, opts: Any) -> None:
    from .convert.dcp_to_torch import source

    ckpt, values = source(path, opts)
    side.closers.append(ckpt)
    side.files += [".metadata", *sorted(p.name for p in ckpt.root.glob("*.distcp"))]
    for key, value in values.items():
        head, _, rest = key.partition(".")
        section = _classify(head) or Section.OTHER
        _add_value(side, section, rest if section is Section.WEIGHTS and rest else key, value)


def _add_deepspeed(side: Side, path: Path, opts: Any) -> None:
    from .convert.deepspeed_read import leaves
    from .convert.loading import load_torch

    ckpt, entries = leaves(path, opts)
    tag = ckpt.tag
    side.files += [f"{tag.name}/{p.name}" for p in tag.glob("*.pt")]
    for name, entry in entries:
        side.add(Section.WEIGHTS, name, entry)
    skip = {"module", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
            "shared_params", "buffer_names", "optimizer", "lr_scheduler", "ds_config",
            "ds_version"}
    m0 = ckpt.models[0]
    for key, value in m0.items():
        if key == "lr_scheduler" and value is not None:
            _add_object(side, value, str(tag), Section.SCHEDULER, "lr_scheduler.")
        elif key not in skip:
            _add_object(side, {key: value}, str(tag), Section.OTHER)
    # the optimizer moments live per rank in the flat partitions of each *_optim_states.pt
    for rank, f in enumerate(sorted(tag.glob("*_optim_states.pt"), key=lambda p: _natural(p.name))):
        osd = load_torch(f, opts).get("optimizer_state_dict", {})
        base = None
        if isinstance(osd, Mapping):  # ZeRO-1/2: base_optimizer_state; ZeRO-3: optimizer_state_dict
            base = osd.get("base_optimizer_state", osd.get("optimizer_state_dict"))
        if base is not None:
            _add_object(side, base, str(f), Section.OPTIMIZER, f"rank{rank}.")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _add_training_files(side: Side, root: Path, opts: Any) -> None:
    import json

    from .convert.loading import load_torch

    names = sorted(p.name for p in root.iterdir() if p.is_file())
    for name in names:
        for pattern, section in _TRAINING_FILES:
            if pattern.match(name) and name not in side.files:
                side.files.append(name)
                stem = name.rsplit(".", 1)[0]
                _add_object(side, load_torch(root / name, opts), str(root / name), section,
                            f"{stem}.")
    if "trainer_state.json" in names:
        side.files.append("trainer_state.json")
        try:
            doc = json.loads((root / "trainer_state.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise _unreadable(root / "trainer_state.json", f"does not parse: {exc}") from None
        if isinstance(doc, dict):
            for key, value in doc.items():
                side.add(Section.OTHER, f"trainer_state.{key}", value)
    side.files += [n for n in names if _RANK_FILE.search(n) and n not in side.files]


# --- comparing --------------------------------------------------------------------------------
@dataclass
class TensorDiff:
    """One tensor present on both sides (key as A names it; key_b when a rename mapped it)."""

    section: Section
    key: str
    key_b: str
    dtype_a: str
    dtype_b: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    equal: bool = False  # same dtype, shape and bytes
    close: bool = False  # every element within atol + rtol * |b| (NaN matches NaN)
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    norm_a: float | None = None
    norm_b: float | None = None
    nan_a: int = 0
    inf_a: int = 0
    nan_b: int = 0
    inf_b: int = 0
    zero_a: bool = False
    zero_b: bool = False
    scalar_a: float | None = None  # the value of a one-element tensor (e.g. Adam's step)
    scalar_b: float | None = None

    @property
    def norm_ratio(self) -> float | None:
        if self.norm_a is None or self.norm_b is None:
            return None
        if self.norm_a == 0:
            return None if self.norm_b == 0 else math.inf
        return self.norm_b / self.norm_a

    def to_json(self) -> dict[str, Any]:
        out = {"section": self.section.value, "key": self.key, "equal": self.equal,
               "close": self.close, "dtype": [self.dtype_a, self.dtype_b],
               "shape": [list(self.shape_a), list(self.shape_b)],
               "max_abs": _num(self.max_abs), "max_rel": _num(self.max_rel),
               "cosine": _num(self.cosine), "norm": [_num(self.norm_a), _num(self.norm_b)],
               "norm_ratio": _num(self.norm_ratio), "nan": [self.nan_a, self.nan_b],
               "inf": [self.inf_a, self.inf_b], "all_zero": [self.zero_a, self.zero_b]}
        if self.key_b != self.key:
            out["key_b"] = self.key_b
        return out


def _num(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return x


@dataclass
class Rename:
    """Keys of A that B names with a different leading prefix (`old` -> `new`)."""

    section: Section
    old: str
    new: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section.value, "from": self.old, "to": self.new,
                "count": self.count}


@dataclass
class TrainingState:
    step: Any = None
    epoch: Any = None
    lr: Any = None
    has: dict[str, bool] = field(default_factory=dict)  # section -> present

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "lr": self.lr, "has": self.has}


@dataclass
class DiffReport:
    a: str
    b: str
    kind_a: str
    kind_b: str
    rtol: float
    atol: float
    resume_equivalent_mode: bool = False
    only_a: dict[Section, list[str]] = field(default_factory=dict)
    only_b: dict[Section, list[str]] = field(default_factory=dict)
    renames: list[Rename] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    values_differ: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> reprs
    values_same: int = 0
    state_a: TrainingState = field(default_factory=TrainingState)
    state_b: TrainingState = field(default_factory=TrainingState)
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)  # param -> stats
    rng: dict[str, bool] = field(default_factory=dict)  # rng entry -> equal
    files_a: list[str] = field(default_factory=list)
    files_b: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """Equal within --rtol/--atol (or, in resume-equivalent mode, resume-equivalent)."""
        if self.resume_equivalent_mode:
            return self.resume_equivalent
        return (not any(self.only_a.values()) and not any(self.only_b.values())
                and not self.renames and not self.values_differ
                and all(t.close and t.dtype_a == t.dtype_b and t.shape_a == t.shape_b
                        for t in self.tensors))

    @property
    def resume_equivalent(self) -> bool:
        return not any(f.code == Code.NOT_RESUME_EQUIVALENT.code for f in self.findings) \
            and self._resume_reasons() == []

    def moved(self, section: Section = Section.WEIGHTS) -> list[str]:
        return [t.key for t in self.tensors if t.section is section and not t.equal]

    def unchanged(self, section: Section = Section.WEIGHTS) -> list[str]:
        return [t.key for t in self.tensors if t.section is section and t.equal]

    def _resume_reasons(self) -> list[str]:
        out = []
        for section in Section:
            a, b = self.only_a.get(section, []), self.only_b.get(section, [])
            if a:
                out.append(f"{section.value}: {len(a)} entr{'y' if len(a) == 1 else 'ies'} only "
                           f"in A ({', '.join(a[:3])}{' ...' if len(a) > 3 else ''})")
            if b:
                out.append(f"{section.value}: {len(b)} entr{'y' if len(b) == 1 else 'ies'} only "
                           f"in B ({', '.join(b[:3])}{' ...' if len(b) > 3 else ''})")
        if self.renames:
            out.append("keys renamed: " + "; ".join(f"{r.old!r} -> {r.new!r}" for r in self.renames))
        bad = [t for t in self.tensors if not t.equal]
        if bad:
            out.append(f"{len(bad)} tensor(s) not bit-identical ({', '.join(t.key for t in bad[:3])}"
                       f"{' ...' if len(bad) > 3 else ''})")
        if self.values_differ:
            keys = list(self.values_differ)
            out.append(f"{len(keys)} value(s) differ ({', '.join(keys[:3])}"
                       f"{' ...' if len(keys) > 3 else ''})")
        ra, rb = _rank_files(self)
        if ra != rb:
            out.append(f"per-rank files differ: {len(ra)} in A, {len(rb)} in B")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "diff", "a": self.a, "b": self.b,
            "kind": [self.kind_a, self.kind_b], "rtol": self.rtol, "atol": self.atol,
            "equal": self.equal, "resume_equivalent": self.resume_equivalent
            if self.resume_equivalent_mode else None,
            "only_a": {s.value: k for s, k in self.only_a.items() if k},
            "only_b": {s.value: k for s, k in self.only_b.items() if k},
            "renames": [r.to_json() for r in self.renames],
            "tensors": [t.to_json() for t in self.tensors],
            "values_differ": {k: list(v) for k, v in self.values_differ.items()},
            "values_same": self.values_same,
            "training_state": {"a": self.state_a.to_json(), "b": self.state_b.to_json()},
            "optimizer_moments": self.moments, "rng": self.rng,
            "files": {"a": self.files_a, "b": self.files_b},
            "findings": [f.to_json() for f in sorted_findings(self.findings)],
        }


def _rank_files(rep: DiffReport) -> tuple[list[str], list[str]]:
    """Per-rank files of each side; only comparable between two checkpoints of one kind (a
    conversion to one consolidated file has none, by design)."""
    if rep.kind_a != rep.kind_b:
        return [], []
    return (sorted(f for f in rep.files_a if _RANK_FILE.search(f)),
            sorted(f for f in rep.files_b if _RANK_FILE.search(f)))


def detect_renames(a: set[str], b: set[str]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Prefix renames that map keys only in A onto keys only in B: [(old, new, pairs)], the
    biggest first. `model.x` vs `x` is ('model.', ''); `module.x` vs `model.x` is
    ('module.', 'model.'). A candidate counts only where it maps at least half of the smaller
    side (and at least one key)."""
    out = []
    a, b = set(a), set(b)
    while a and b:
        votes: Counter = Counter()
        for ka in sorted(a)[:64]:
            for kb in b:
                pa, pb = _split_common_suffix(ka, kb)
                if pa is not None:
                    votes[(pa, pb)] += 1
        best = None
        for (pa, pb), _n in votes.most_common(8):
            pairs = [(ka, pb + ka[len(pa):]) for ka in a
                     if ka.startswith(pa) and pb + ka[len(pa):] in b]
            if pairs and (best is None or len(pairs) > len(best[2])):
                best = (pa, pb, pairs)
        if best is None or len(best[2]) * 2 < min(len(a), len(b)):
            break
        out.append(best)
        a -= {x for x, _ in best[2]}
        b -= {y for _, y in best[2]}
    return out


def _split_common_suffix(ka: str, kb: str) -> tuple[str | None, str]:
    """(prefix of ka, prefix of kb) when both end in the same dotted suffix and differ only in
    their leading dotted components."""
    pa, pb = ka.split("."), kb.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    if n == 0 or (n == len(pa) and n == len(pb)):
        return None, ""
    head_a, head_b = pa[:len(pa) - n], pb[:len(pb) - n]
    return (".".join(head_a) + "." if head_a else ""), (".".join(head_b) + "." if head_b else "")


def compare_pair(section: Section, key: str, key_b: str, ea: Any, eb: Any, side_a: Side,
                 side_b: Side, rtol: float, atol: float) -> TensorDiff:
    """Stream one tensor pair in chunks: equality, closeness, max abs / rel difference,
    cosine, norms, NaN / Inf counts, all-zero. Only this pair is in memory."""
    import torch

    from .convert.common import dtype_name, release_tensor

    d = TensorDiff(section, key, key_b, dtype_name(ea.dtype), dtype_name(eb.dtype),
                   tuple(ea.shape), tuple(eb.shape))
    with side_a.lock:
        ta = ea.load()
    with side_b.lock:
        tb = eb.load()
    try:
        _stream_stats(d, ta, tb, rtol, atol, torch)
    finally:
        release_tensor(ta, ea.mapped)
        release_tensor(tb, eb.mapped)
    return d


def _stats_dtype(t: Any, torch: Any) -> Any:
    return torch.complex128 if t.is_complex() else torch.float64


def _stream_stats(d: TensorDiff, ta: Any, tb: Any, rtol: float, atol: float, torch: Any) -> None:
    fa, fb = ta.detach().reshape(-1), tb.detach().reshape(-1)
    same_layout = d.shape_a == d.shape_b
    d.equal = same_layout and ta.dtype == tb.dtype
    d.close = same_layout
    sums = {"dot": 0.0, "aa": 0.0, "bb": 0.0, "max_abs": 0.0, "max_rel": 0.0}
    nz_a = nz_b = 0
    for side, flat in (("a", fa), ("b", fb)):
        for i in range(0, flat.numel(), CHUNK_ELEMENTS):
            c = flat[i:i + CHUNK_ELEMENTS]
            if c.dtype == torch.bool:
                c = c.to(torch.uint8)
            if c.is_floating_point() or c.is_complex():
                nan = int(torch.isnan(c).sum())
                inf = int(torch.isinf(c).sum())
            else:
                nan = inf = 0
            nz = int(torch.count_nonzero(c))
            if side == "a":
                d.nan_a += nan
                d.inf_a += inf
                nz_a += nz
            else:
                d.nan_b += nan
                d.inf_b += inf
                nz_b += nz
    d.zero_a, d.zero_b = fa.numel() > 0 and nz_a == 0, fb.numel() > 0 and nz_b == 0
    if fa.numel() == 1:
        d.scalar_a = _scalar(fa)
    if fb.numel() == 1:
        d.scalar_b = _scalar(fb)
    if fa.numel() != fb.numel():
        d.equal = d.close = False
        d.norm_a, d.norm_b = _norm(fa, torch), _norm(fb, torch)
        return
    for i in range(0, fa.numel(), CHUNK_ELEMENTS):
        ca, cb = fa[i:i + CHUNK_ELEMENTS], fb[i:i + CHUNK_ELEMENTS]
        if d.equal and not torch.equal(_bits(ca, torch), _bits(cb, torch)):
            d.equal = False
        a = ca.to(_stats_dtype(ca, torch)) if not ca.dtype == torch.bool else ca.double()
        b = cb.to(_stats_dtype(cb, torch)) if not cb.dtype == torch.bool else cb.double()
        if a.is_complex() or b.is_complex():
            a, b = torch.view_as_real(a.to(torch.complex128)).reshape(-1), \
                torch.view_as_real(b.to(torch.complex128)).reshape(-1)
        finite = torch.isfinite(a) & torch.isfinite(b)
        both_nan = torch.isnan(a) & torch.isnan(b)
        same_inf = torch.isinf(a) & (a == b)
        if d.close and not bool((finite | both_nan | same_inf).all()):
            d.close = False
        af, bf = a[finite], b[finite]
        diff = (af - bf).abs()
        if diff.numel():
            sums["max_abs"] = max(sums["max_abs"], float(diff.max()))
            denom = torch.maximum(af.abs(), bf.abs())
            rel = torch.where(denom > 0, diff / denom.clamp_min(1e-300), torch.zeros_like(diff))
            sums["max_rel"] = max(sums["max_rel"], float(rel.max()))
            if d.close and not bool((diff <= atol + rtol * bf.abs()).all()):
                d.close = False
        sums["dot"] += float((af * bf).sum())
        sums["aa"] += float((af * af).sum())
        sums["bb"] += float((bf * bf).sum())
    d.max_abs, d.max_rel = sums["max_abs"], sums["max_rel"]
    d.norm_a, d.norm_b = math.sqrt(sums["aa"]), math.sqrt(sums["bb"])
    if d.norm_a > 0 and d.norm_b > 0:
        d.cosine = max(-1.0, min(1.0, sums["dot"] / (d.norm_a * d.norm_b)))
    elif d.norm_a == 0 and d.norm_b == 0:
        d.cosine = None
    if d.equal:
        d.close = True


def _bits(c: Any, torch: Any) -> Any:
    return c.contiguous().view(torch.uint8) if c.numel() and c.dtype != torch.bool else c


def _scalar(flat: Any) -> float | None:
    try:
        v = flat[0].item()
    except (RuntimeError, ValueError):
        return None
    return float(v.real if isinstance(v, complex) else v)


def _norm(flat: Any, torch: Any) -> float:
    total = 0.0
    for i in range(0, flat.numel(), CHUNK_ELEMENTS):
        c = flat[i:i + CHUNK_ELEMENTS].to(torch.float64)
        c = c[torch.isfinite(c)]
        total += float((c * c).sum())
    return math.sqrt(total)


def _values_equal(a: Any, b: Any) -> bool:
    """Equal, or equal as plain data: a numpy array and the list of its values, a tuple and a
    list, a numpy scalar and its Python value restore the same state (repair rewrites numpy
    RNG states that way so plain weights_only loads them; np.random.set_state takes both)."""
    from .convert.codec import deep_equal

    try:
        if deep_equal(a, b) is None:
            return True
    except Exception:  # noqa: BLE001 - exotic objects: compare their reprs
        if repr(a) == repr(b):
            return True
    try:
        return _plain_data(a) == _plain_data(b)
    except _NotPlain:
        return False


class _NotPlain(Exception):
    pass


def _plain_data(v: Any, depth: int = 0) -> Any:
    import numpy as np

    if depth > 50:
        raise _NotPlain
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise _NotPlain
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        items = [_plain_data(x, depth + 1) for x in v]
        return items
    if isinstance(v, Mapping):
        return {k: _plain_data(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (str, bytes, int, float, bool, type(None))):
        return v
    raise _NotPlain


def _short(v: Any, n: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n - 3] + "..."


def diff(a: str | os.PathLike, b: str | os.PathLike, *, rtol: float = 1e-5, atol: float = 1e-8,
         resume_equivalent: bool = False, jobs: int = 1, allow: tuple[str, ...] = (),
         trust: bool = False) -> DiffReport:
    """Compare checkpoints A and B. Raises DiffError (CK901) when a side cannot be read."""
    side_a = open_side(a, allow, trust)
    try:
        side_b = open_side(b, allow, trust)
    except BaseException:
        side_a.close()
        raise
    from .convert.common import ConvertError

    try:
        return _diff(side_a, side_b, rtol, atol, resume_equivalent, max(1, int(jobs)))
    except ConvertError as exc:  # a tensor that does not load (DCP chunk, ZeRO partition)
        raise _unreadable(exc.finding.path, f"{exc.finding.code} {exc.finding.message}",
                          exc.finding.hint) from None
    finally:
        side_a.close()
        side_b.close()


def _diff(sa: Side, sb: Side, rtol: float, atol: float, resume_equivalent: bool,
          jobs: int) -> DiffReport:
    rep = DiffReport(str(sa.path), str(sb.path), sa.kind, sb.kind, rtol, atol, resume_equivalent,
                     files_a=sa.files, files_b=sb.files)
    pairs: list[tuple[Section, str, str, Any, Any]] = []
    for section in Section:
        ta, tb = sa.tensors.get(section, {}), sb.tensors.get(section, {})
        va, vb = sa.values.get(section, {}), sb.values.get(section, {})
        only_a = set(sa.keys(section)) - sb.keys(section)
        only_b = set(sb.keys(section)) - sa.keys(section)
        mapping: dict[str, str] = {}
        if section is Section.WEIGHTS:
            for old, new, found in detect_renames(only_a & set(ta), only_b & set(tb)):
                rep.renames.append(Rename(section, old, new, len(found)))
                mapping.update(found)
            only_a -= set(mapping)
            only_b -= set(mapping.values())
        rep.only_a[section] = sorted(only_a)
        rep.only_b[section] = sorted(only_b)
        for key in sorted(set(ta) & set(tb)) + sorted(mapping):
            kb = mapping.get(key, key)
            if key in ta and kb in tb:
                pairs.append((section, key, kb, ta[key], tb[kb]))
        for key in sorted(set(ta) & set(vb) | set(va) & set(tb)):
            rep.values_differ[f"{section.value}:{key}"] = (
                "tensor" if key in ta else _short(va[key]), "tensor" if key in tb else _short(vb[key]))
        for key in sorted(set(va) & set(vb)):
            if _values_equal(va[key], vb[key]):
                rep.values_same += 1
            else:
                rep.values_differ[f"{section.value}:{key}"] = (_short(va[key]), _short(vb[key]))
    run = lambda p: compare_pair(p[0], p[1], p[2], p[3], p[4], sa, sb, rtol, atol)  # noqa: E731
    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rep.tensors = list(pool.map(run, pairs))
    else:
        rep.tensors = [run(p) for p in pairs]
    rep.state_a, rep.state_b = _training_state(sa), _training_state(sb)
    rep.moments = _moments(rep.tensors, sa, sb)
    rep.rng = {t.key: t.equal for t in rep.tensors if t.section is Section.RNG}
    for k in sorted(set(sa.values.get(Section.RNG, {})) & set(sb.values.get(Section.RNG, {}))):
        rep.rng[k] = f"rng:{k}" not in rep.values_differ
    rep.findings = _findings(rep)
    return rep


def _training_state(side: Side) -> TrainingState:
    st = TrainingState(has={s.value: bool(side.keys(s)) for s in Section})
    flat = {**side.values.get(Section.OTHER, {}), **side.values.get(Section.SCHEDULER, {})}
    for want in _STEP_KEYS:
        hit = next((v for k, v in flat.items() if k.rpartition(".")[2] == want
                    and isinstance(v, int) and not isinstance(v, bool)), None)
        if hit is not None:
            st.step = hit
            break
    st.epoch = next((v for k, v in flat.items() if k.rpartition(".")[2] == "epoch"
                     and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    optim = side.values.get(Section.OPTIMIZER, {})
    for k, v in optim.items():
        if k.rpartition(".")[2] == "param_groups" and isinstance(v, (list, tuple)):
            st.lr = [g.get("lr") for g in v if isinstance(g, Mapping)]
            break
    if st.lr is None:  # DCP flattens param groups: optim.param_groups.0.lr
        lrs = [v for k, v in optim.items() if re.search(r"param_groups\.\d+\.lr$", k)]
        st.lr = lrs or None
    if st.lr is None:
        st.lr = next((list(v) for k, v in side.values.get(Section.SCHEDULER, {}).items()
                      if k.endswith("_last_lr") and isinstance(v, (list, tuple))), None)
    return st


def _moments(tensors: list[TensorDiff], sa: Side, sb: Side) -> dict[str, dict[str, Any]]:
    """Per optimizer parameter: exp_avg / exp_avg_sq norms on both sides and the step counts."""
    out: dict[str, dict[str, Any]] = {}
    for t in tensors:
        if t.section is not Section.OPTIMIZER:
            continue
        m = _MOMENT.search(t.key)
        if not m:
            continue
        param, what = m.group(1), m.group(2)
        row = out.setdefault(param, {})
        if what == "step":
            row["step"] = [t.scalar_a, t.scalar_b]
        else:
            row[what] = {"norm": [_num(t.norm_a), _num(t.norm_b)], "equal": t.equal,
                         "norm_ratio": _num(t.norm_ratio)}
    for section_values, idx in ((sa.values.get(Section.OPTIMIZER, {}), 0),
                                (sb.values.get(Section.OPTIMIZER, {}), 1)):
        for k, v in section_values.items():  # plain-int steps (older torch, other optimizers)
            m = _MOMENT.search(k)
            if m and m.group(2) == "step" and isinstance(v, (int, float)):
                out.setdefault(m.group(1), {}).setdefault("step", [None, None])[idx] = v
    return out


def _findings(rep: DiffReport) -> list[Finding]:
    out: list[Finding] = []
    for section in Section:
        for side, keys in (("A", rep.only_a.get(section, [])), ("B", rep.only_b.get(section, []))):
            if not keys:
                continue
            other_has = (rep.state_b if side == "A" else rep.state_a).has.get(section.value)
            if section in (Section.OPTIMIZER, Section.SCHEDULER, Section.RNG) and not other_has:
                missing = "B" if side == "A" else "A"
                out.append(Code.DIFF_STATE_MISSING.finding(
                    section.value, f"{section.value} state only in {side}: resuming from "
                                   f"{missing} starts the {section.value} from scratch",
                    hint="resume from a checkpoint that has it (ckptdoctor latest RUN_DIR)",
                    side=side, count=len(keys)))
            else:
                out.append(Code.DIFF_KEYS.finding(
                    section.value, f"{len(keys)} {section.value} entr{'y' if len(keys) == 1 else 'ies'} "
                                   f"only in {side}: " + ", ".join(keys[:5])
                                   + (" ..." if len(keys) > 5 else ""), side=side, keys=keys))
    for r in rep.renames:
        out.append(Code.DIFF_RENAMED.finding(
            r.section.value, f"{r.count} keys renamed: prefix {r.old or '(none)'!r} in A is "
                             f"{r.new or '(none)'!r} in B",
            hint=f"ckptdoctor convert --strip-prefix {r.old}" if r.old and not r.new else "",
            old=r.old, new=r.new, count=r.count))
    for t in rep.tensors:
        where = f"{t.section.value}:{t.key}"
        if t.shape_a != t.shape_b:
            out.append(Code.DIFF_SHAPE.finding(where, f"{t.key}: shape {list(t.shape_a)} in A, "
                                                      f"{list(t.shape_b)} in B"))
        elif t.dtype_a != t.dtype_b:
            out.append(Code.DIFF_DTYPE.finding(where, f"{t.key}: {t.dtype_a} in A, {t.dtype_b} in B"))
        if t.shape_a == t.shape_b and not t.close and t.section is not Section.RNG:
            out.append(Code.DIFF_VALUES.finding(
                where, f"{t.key}: max abs diff {_fmt(t.max_abs)}, max rel {_fmt(t.max_rel)}, "
                       f"cosine {_fmt(t.cosine)}, norm ratio {_fmt(t.norm_ratio)}"))
        for side, nan, inf in (("A", t.nan_a, t.inf_a), ("B", t.nan_b, t.inf_b)):
            if nan or inf:
                out.append(Code.DIFF_NONFINITE.finding(where, f"{t.key}: {nan} NaN, {inf} Inf "
                                                              f"in {side}", side=side))
        zero = [s for s, z in (("A", t.zero_a), ("B", t.zero_b)) if z]
        if zero and t.section is Section.WEIGHTS:
            out.append(Code.DIFF_ZERO.finding(where, f"{t.key}: all zeros in {' and '.join(zero)}"
                                              + (" (never trained?)" if len(zero) == 1 else ""),
                                              sides=zero))
    for key, (va, vb) in rep.values_differ.items():
        section = key.partition(":")[0]
        code = Code.DIFF_RNG if section == Section.RNG.value else Code.DIFF_STATE
        out.append(code.finding(key, f"{key.partition(':')[2]}: {va} in A, {vb} in B"))
    for t in rep.tensors:
        if t.section is Section.RNG and not t.equal:
            out.append(Code.DIFF_RNG.finding(f"rng:{t.key}", f"{t.key}: RNG state differs"))
    ra, rb = _rank_files(rep)
    if ra != rb:
        out.append(Code.DIFF_RANKS.finding("", f"per-rank files: {len(ra)} in A, {len(rb)} in B; "
                                               f"only in A: {sorted(set(ra) - set(rb))[:4]}, "
                                               f"only in B: {sorted(set(rb) - set(ra))[:4]}"))
    if rep.resume_equivalent_mode:
        reasons = rep._resume_reasons()
        if reasons:
            out.append(Code.NOT_RESUME_EQUIVALENT.finding(
                "", "B would not resume exactly as A: " + "; ".join(reasons), reasons=reasons))
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.4g}"


# --- rendering (pure) ------------------------------------------------------------------------
def render_text(rep: DiffReport, width: int = 100, color: bool = False) -> str:
    """The human view. With color (a terminal) the tensor table is a rich table."""
    lines = [f"A: {rep.a} ({rep.kind_a})", f"B: {rep.b} ({rep.kind_b})"]
    sa, sb = rep.state_a, rep.state_b
    lines.append(f"step {sa.step} -> {sb.step}   epoch {sa.epoch} -> {sb.epoch}   "
                 f"lr {sa.lr} -> {sb.lr}")
    present = [f"{s}: {'A' if sa.has.get(s) else '-'}{'B' if sb.has.get(s) else '-'}"
               for s in (x.value for x in Section)]
    lines.append("sections " + ", ".join(present))
    by_section = Counter(t.section.value for t in rep.tensors)
    moved = Counter(t.section.value for t in rep.tensors if not t.equal)
    for section in Section:
        n = by_section.get(section.value, 0)
        oa, ob = len(rep.only_a.get(section, [])), len(rep.only_b.get(section, []))
        if n or oa or ob:
            lines.append(f"  {section.value:<10} {n} common tensor(s), {moved.get(section.value, 0)} "
                         f"changed, {n - moved.get(section.value, 0)} unchanged; {oa} only in A, "
                         f"{ob} only in B")
    frozen, moved_w = rep.unchanged(Section.WEIGHTS), rep.moved(Section.WEIGHTS)
    if frozen and moved_w:
        lines.append(f"unchanged weights (frozen or never trained): {', '.join(frozen[:10])}"
                     + (f" ... ({len(frozen)})" if len(frozen) > 10 else ""))
    ra, rb = (sorted(f for f in files if _RANK_FILE.search(f))
              for files in (rep.files_a, rep.files_b))
    if ra or rb:
        lines.append(f"per-rank files: {len(ra)} in A, {len(rb)} in B")
    if rep.rng:
        same = sum(1 for v in rep.rng.values() if v)
        lines.append(f"rng: {same}/{len(rep.rng)} entries equal")
    if rep.moments:
        lines.append(f"optimizer moments for {len(rep.moments)} parameter(s)")
    changed = [t for t in rep.tensors if not t.equal]
    if changed:
        table = _table(changed[:50], width, color)
        lines.append(table.rstrip("\n"))
        if len(changed) > 50:
            lines.append(f"... {len(changed) - 50} more changed tensors (--format json lists all)")
    for param, row in list(rep.moments.items())[:5]:
        parts = [f"{k} |{_fmt(_float(v['norm'][0]))}|->|{_fmt(_float(v['norm'][1]))}|"
                 for k, v in row.items() if k != "step"]
        if "step" in row:
            parts.append(f"step {_fmt(_float(row['step'][0]))}->{_fmt(_float(row['step'][1]))}")
        lines.append(f"  param {param}: " + ", ".join(parts))
    if len(rep.moments) > 5:
        lines.append(f"  ... {len(rep.moments) - 5} more parameters (--format json lists all)")
    shown: Counter = Counter()
    total = Counter(f.code for f in rep.findings)
    for f in sorted_findings(rep.findings):
        shown[f.code] += 1
        if shown[f.code] > _PER_CODE:
            if shown[f.code] == _PER_CODE + 1:
                lines.append(f"{f.code} ... {total[f.code] - _PER_CODE} more like this "
                             "(--format json lists all)")
            continue
        lines.append(f"{f.code} {f.severity}: {f.message}")
        if f.hint:
            lines.append(f"  hint: {f.hint}")
    if rep.resume_equivalent_mode:
        lines.append("resume-equivalent: " + ("yes, B continues exactly as A" if rep.equal
                                              else "NO"))
    else:
        lines.append("equal" + (f" within rtol={rep.rtol:g}, atol={rep.atol:g}" if rep.equal
                                else ": no"))
    return "\n".join(lines) + "\n"


_PER_CODE = 8  # findings of one code shown in text before "... N more"


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


_COLUMNS = ("tensor", "section", "dtype", "shape", "max abs", "max rel", "cosine", "norm B/A",
            "NaN/Inf")


def _row(t: TensorDiff) -> list[str]:
    dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a}->{t.dtype_b}"
    shape = "x".join(map(str, t.shape_a)) if t.shape_a == t.shape_b else \
        f"{list(t.shape_a)}->{list(t.shape_b)}"
    return [t.key, t.section.value, dtype, shape or "()", _fmt(t.max_abs), _fmt(t.max_rel),
            _fmt(t.cosine), _fmt(t.norm_ratio), f"{t.nan_a + t.inf_a}/{t.nan_b + t.inf_b}"]


def _table(rows: list[TensorDiff], width: int, color: bool) -> str:
    if color:
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(*_COLUMNS, title="changed tensors", title_justify="left")
        for t in rows:
            table.add_row(*_row(t))
        buf = io.StringIO()
        Console(file=buf, width=width, force_terminal=True).print(table)
        return buf.getvalue()
    cells = [list(_COLUMNS)] + [_row(t) for t in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells) + "\n"


def to_json(rep: DiffReport) -> str:
    import json

    return json.dumps(rep.to_json(), indent=2, default=str)


def exit_code(rep: DiffReport) -> int:
    """0 equal (within tolerance / resume-equivalent), 1 different."""
    return 0 if rep.equal else 1


__all__ = ["diff", "open_side", "DiffReport", "TensorDiff", "Rename", "Section", "DiffError",
           "detect_renames", "render_text", "to_json", "exit_code"]
