"""What every layout module shares: the Layout protocol and its vocabulary (Consumer,
Evidence, LayoutBase), and the checks several layouts run (leftovers, indexes, DCP storage).
The cached directory view they all read is `dirview.DirView`.

A layout knows one framework's checkpoint: how to recognise it, what it records about itself
(step, epoch, world size, ...), which files its resume needs, and how its resume loads each file
(the *consumer*), so validate can judge a checkpoint by what that framework really does."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..codes import Code
from ..formats.dcp import DcpMetadata
from ..model import Finding, LayoutInfo, Severity
from ..pickles.scan import Obj, SymDict
from .dirview import STAGING_PREFIXES, DirView, join


@dataclass(frozen=True)
class Consumer:
    """How a framework's resume loads one file.

    mode: "weights_only"  torch.load(weights_only=True) with `allow` added by the framework
          "unsafe"        torch.load(weights_only=False) (only a dangerous global stops it)
          "safetensors"   no pickle involved
          "unused"        resume never reads it (e.g. HF training_args.bin)"""

    mode: str
    allow: frozenset[str] = frozenset()
    who: str = ""  # "transformers Trainer._load_rng_state", for messages
    fatal: bool = True  # False: the framework catches the load error and resumes without the
    # file's state (accelerate's RNG restore), so a failure means "silently not restored"


WEIGHTS_ONLY = Consumer("weights_only", who="torch.load(weights_only=True)")


class Layout(Protocol):
    name: str
    framework: str  # the package whose resume consumes it ("transformers", "deepspeed", ...)

    def match(self, d: DirView) -> bool:
        """Cheap recognition from names (and at most a small JSON/text read)."""

    def describe(self, d: DirView) -> LayoutInfo:
        """Step, epoch, world size, versions... whatever the framework recorded."""

    def check(self, d: DirView) -> list[Finding]:
        """Completeness: what this framework's resume needs that is missing or inconsistent."""

    def consumer(self, d: DirView, rel: str) -> Consumer:
        """How this framework's resume loads the file `rel`."""

    def children(self, d: DirView) -> list[str]:
        """Checkpoints inside `d` (a run of them) judged one by one; [] for one checkpoint."""

    def summary_keys(self) -> tuple[str, ...]:
        """LayoutInfo.details keys worth one line of text (`inspect`, `validate`)."""

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        """(what wrote these pickled globals, which release fixed loading it) for a file named
        `base` (lower case) in a layout named `lay`, or None when this framework did not
        write them (diagnosis)."""

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """Whether this framework wrote the single file `base` (repair's flavour: the rules
        keep what its resume needs). `keys` are the string keys of the file's root when it is
        a dict (else None), `root_global` the class the root stands for. Evidence.CONTENT when
        the content says so, Evidence.NAME when only the file name does, else None."""


class Evidence(enum.Enum):
    """How a layout knows it wrote a file: content outranks a file name."""
    CONTENT = "content"
    NAME = "name"


# --- shared helpers ---------------------------------------------------------------------------
# Layout modules use these so one rule (index consistency, DCP storage, leftovers) lives once.

SAFETENSORS = Consumer("safetensors", who="safetensors (no pickle)")
DCP_CONSUMER = Consumer("unsafe", who="torch.distributed.checkpoint: BytesIO items are read "
                        "with torch.load(weights_only=False), .metadata with pickle.load")
NUMPY_RNG = frozenset({"numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                       "numpy.dtypes.UInt32DType"})


def plain(value: Any) -> Any:
    """A literal from a symbolic tree: ints/strs as is, an enum member as its value."""
    if isinstance(value, Obj) and isinstance(value.args, tuple) and len(value.args) == 1:
        value = value.args[0]
    return value if isinstance(value, (int, float, str, bool)) else None


def attr(obj: Any, key: str) -> Any:
    """An attribute of a pickled object (argparse.Namespace & co. keep it in BUILD state)."""
    state = obj.state if isinstance(obj, Obj) else None
    for k, v in state if isinstance(state, SymDict) else []:
        if k == key:
            return v
    return None


def top_files(d: DirView, sub: str = "") -> list[str]:
    """Names of the files directly in `sub` (default: the directory itself)."""
    pre = sub + "/" if sub else ""
    return [f[len(pre):] for f in d.files if f.startswith(pre) and "/" not in f[len(pre):]]


def top_dirs(d: DirView, sub: str = "") -> list[str]:
    pre = sub + "/" if sub else ""
    return [x[len(pre):] for x in d.dirs if x.startswith(pre) and "/" not in x[len(pre):]]


def numbered(names: list[str], pattern: str) -> dict[int, str]:
    """{N: name} for names fully matching a regex with one integer group."""
    out = {}
    for n in names:
        m = re.fullmatch(pattern, n)
        if m:
            out[int(m.group(1))] = n
    return out


def missing(d: DirView, rel: str, why: str, hint: str = "") -> Finding:
    return Code.MISSING_FILE.finding(d.outer(rel), f"{rel} is missing: {why}", hint)


def load_json(d: DirView, rel: str, why: str, code: Code = Code.JSON_INVALID
              ) -> tuple[Any, list[Finding]]:
    """(parsed JSON or None, findings): missing -> CK401, unparseable -> `code`.
    A zero-byte file gets no finding here: formats already report it (CK003)."""
    if not d.has(rel):
        return None, [missing(d, rel, why)]
    data = d.read_json(rel)
    if data is None and (d.root / rel).stat().st_size:
        return None, [code.finding(d.outer(rel), f"{rel} does not parse as JSON; {why}")]
    return data, []


def check_common(d: DirView, skip: tuple[str, ...] = ()) -> list[Finding]:
    """Every layout: staging leftovers of an interrupted save (CK406), dangling links (CK407).
    `skip`: subdirectories checked on their own (a run's checkpoints)."""
    out = []
    reported = list(skip)
    for rel in sorted(d.dirs + d.files):
        name = rel.rsplit("/", 1)[-1]
        if any(rel.startswith(r + "/") for r in reported):
            continue
        staging = rel in d.dirs and name.startswith(STAGING_PREFIXES)
        if staging or name.startswith("tmp-checkpoint-") or name.endswith(".tmp"):
            reported.append(rel)
            out.append(Code.LEFTOVER_TMP.finding(
                d.outer(rel), f"{rel} is staging left by an interrupted save (the final rename "
                "never happened)", hint="the checkpoint it was becoming is incomplete; delete "
                "the leftover once the previous checkpoint is confirmed good"))
    for rel in (x for x in d.broken_links if not x.startswith(tuple(s + "/" for s in skip))):
        link = d.root / rel  # a storage.RemotePath is never a link
        target = os.readlink(link) if isinstance(link, Path) and link.is_symlink() else "?"
        out.append(Code.DANGLING_LINK.finding(
            d.outer(rel), f"{rel} -> {target} points to nothing (the target was deleted, e.g. "
            "by top-k pruning)", hint=f"re-point {rel} at an existing checkpoint or remove it",
            target=target))
    return out


def check_index(d: DirView, index: str) -> list[Finding]:
    """A HF weight index (`*.index.json`): parses (CK414), every shard exists (CK402), every
    name is in its shard's header (CK403), metadata.total_size matches the tensors (CK414)."""
    data, out = load_json(d, index, "from_pretrained reads it to find the shards",
                          Code.INDEX_INVALID)
    if data is None:
        return out
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        return out + [Code.INDEX_INVALID.finding(d.outer(index), f"{index} has no weight_map "
                                                 "of tensor name -> shard file")]
    base = index.rpartition("/")[0]
    sizes: dict[tuple, int] = {}  # tied .bin weights share a storage: total_size counts it once
    complete = True
    for shard in sorted(set(wmap.values())):
        rel = join(base, shard)
        names = [n for n, s in wmap.items() if s == shard]
        if not d.has(rel):
            complete = False
            out.append(Code.INDEX_SHARD_MISSING.finding(
                d.outer(rel), f"{index} maps {len(names)} tensors to {shard}, which does not "
                "exist", hint="the save was interrupted or the shard was deleted; restore it "
                "or use another checkpoint", index=index, tensors=len(names)))
            continue
        info = d.info(rel)
        have = {t.name: t for t in info.tensors}
        if not have and (info.size == 0 or any(f.severity is Severity.ERROR
                                               for f in info.findings)):
            complete = False  # unreadable shard: its own findings say why
            continue
        lacking = [n for n in names if n not in have]
        if lacking:
            complete = False
            out.append(Code.INDEX_TENSOR_MISSING.finding(
                d.outer(rel), f"{len(lacking)} tensor(s) the index maps to {shard} are not in "
                f"its header, e.g. {', '.join(lacking[:3])}", hint="the shard is from another "
                "save than the index; re-save the model", missing=lacking[:20]))
        for t in (have[n] for n in names if n in have):
            sizes[(rel, t.storage, t.offset) if t.storage else (rel, t.name)] = t.nbytes
    meta = data.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    if complete and isinstance(total, int) and sum(sizes.values()) != total:
        out.append(Code.INDEX_INVALID.finding(
            d.outer(index), f"metadata.total_size is {total} but the indexed tensors hold "
            f"{sum(sizes.values())} bytes", hint="index and shards come from different saves",
            total_size=total, actual=sum(sizes.values())))
    return out


def weights_details(d: DirView, files: list[str]) -> dict[str, Any]:
    """num_shards / total_size / dtype of a set of weight files (or one index) for describe()."""
    index = next((f for f in files if f.endswith(".index.json")), None)
    if index:
        data = d.read_json(index)
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        shards = sorted(set(wmap.values())) if isinstance(wmap, dict) else []
        meta = data.get("metadata") if isinstance(data, dict) else None
        out: dict[str, Any] = {"num_shards": len(shards),
                               "total_size": meta.get("total_size") if isinstance(meta, dict)
                               else None}
        base = index.rpartition("/")[0]
        sample = [join(base, s) for s in shards[:1] if d.has(join(base, s))]
    else:
        sample = [f for f in files if d.has(f)]
        out = {"num_shards": len(sample),
               "total_size": sum(t.nbytes for f in sample for t in d.info(f).tensors)}
    dtypes: dict[str, int] = {}
    for f in sample:
        for t in d.info(f).tensors:
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
    if dtypes:
        out["dtype"] = max(dtypes, key=dtypes.__getitem__)
    return out


def dcp_ranks(d: DirView, sub: str = "") -> set[int]:
    """Ranks that wrote `__<rank>_<n>.distcp` shards."""
    return {int(m.group(1)) for f in top_files(d, sub)
            if (m := re.fullmatch(r"__(\d+)_\d+\.distcp", f))}


def is_dcp(d: DirView, sub: str = "") -> bool:
    return any(f == ".metadata" or f.endswith(".distcp") for f in top_files(d, sub))


def dcp_keys(md: DcpMetadata | None) -> set[str]:
    """Top-level state-dict keys ('model', 'optimizer', ...) a DCP checkpoint holds."""
    if md is None:
        return set()
    return {k.split(".", 1)[0] for k in list(md.tensors) + md.bytes_items}


def check_dcp(d: DirView, sub: str = "") -> list[Finding]:
    """DCP completeness: `.metadata` exists (written last, CK401) and every storage entry's
    file exists and is at least offset+length long (CK412)."""
    meta = join(sub, ".metadata")
    if not d.has(meta):
        if any(re.fullmatch(r"__\d+\.metadata", f) for f in top_files(d, sub)):
            return []  # saved without collectives: one metadata file per rank, no global one
        return [missing(d, meta, "DCP writes it last (after every shard), so the save did not "
                        "finish; dcp.load cannot read this checkpoint",
                        "use the previous checkpoint")]
    md = d.dcp_metadata(sub)
    if md is None:
        return []  # unparseable: the format check (CK802 / CK003) says why
    need: dict[str, tuple[int, int]] = {}  # file -> (bytes needed, entries)
    for e in md.storage:
        end, n = need.get(e.relative_path, (0, 0))
        need[e.relative_path] = (max(end, e.offset + e.length), n + 1)
    out = []
    for name, (end, n) in sorted(need.items()):
        rel = join(sub, name)
        try:  # the name comes from the file: it may be anything
            size = (d.root / rel).stat().st_size if (d.root / rel).is_file() else None
        except (OSError, ValueError):
            size = None
        if size is None:
            out.append(Code.DCP_STORAGE.finding(
                d.outer(rel), f".metadata places {n} item(s) in {name}, which does not exist",
                hint="a rank's shard is missing; this checkpoint cannot be loaded"))
        elif 0 < size < end:
            out.append(Code.DCP_STORAGE.finding(
                d.outer(rel), f"{name} holds {size} bytes but .metadata needs {end}: the shard "
                "was cut short", hint="use the previous checkpoint", size=size, needed=end))
    return out


def dcp_details(d: DirView, sub: str = "") -> dict[str, Any]:
    md = d.dcp_metadata(sub)
    out: dict[str, Any] = {"world_size": len(dcp_ranks(d, sub)) or None}
    if md is not None:
        dtypes: dict[str, int] = {}
        for t in md.tensors.values():
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
        out.update(keys=sorted(dcp_keys(md)), tensors=len(md.tensors),
                   total_size=sum(t.nbytes for t in md.tensors.values()),
                   dcp_version=md.version)
        if dtypes:
            out["dtype"] = max(dtypes, key=dtypes.__getitem__)
    return out


class LayoutBase:
    """Defaults for a layout: check() = the all-layout checks + the layout's own `checks()`.

    Layouts that contain another one's files (an HF checkpoint with a DeepSpeed tag, a run of
    checkpoints) call that layout's `checks()` so the all-layout checks run once."""

    name = ""
    framework = "torch"

    def check(self, d: DirView) -> list[Finding]:
        return check_common(d) + self.checks(d)

    def checks(self, d: DirView) -> list[Finding]:
        return []

    def consumer(self, d: DirView, rel: str) -> Consumer:
        return WEIGHTS_ONLY

    def children(self, d: DirView) -> list[str]:
        return []

    def summary_keys(self) -> tuple[str, ...]:
        return ("epoch", "learning_rate", "world_size", "zero_stage", "num_shards", "dtype",
                "transformers_version", "ds_version", "lightning_version", "torch_version")

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        return None

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        return None
