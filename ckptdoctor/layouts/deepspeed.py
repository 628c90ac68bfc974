"""DeepSpeed `engine.save_checkpoint`: `<save_dir>/latest` names a tag dir holding
`[zero_pp_rank_<dp>_]mp_rank_<mp>_model_states.pt` and, under ZeRO, one
`[bf16_]zero_pp_rank_<dp>_mp_rank_<mp>_optim_states.pt` per data-parallel rank.

`load_checkpoint(tag=None)` reads `latest`; without it DeepSpeed warns and loads nothing, and a
missing optimizer partition only surfaces in zero_to_fp32 or on resume, so both are checked
here. Sizes and stages are read off the pickles statically (dp_world_size, partition_count)."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo, Severity
from ..pickles.scan import SymList, lookup
from .base import Consumer, DirView, Evidence, LayoutBase, join, missing, plain, top_dirs, top_files
from .versions import Env

MODEL_RE = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt")
OPTIM_RE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
# DeepSpeed unpickles with weights_only=False, so only the scan can vouch for a file: it
# passes when every global is torch-allowed or reviewed data (DeepSpeed's own LossScaler,
# ZeroStageEnum and fragment_address are in policy.DATA_EXACT; see tests/test_deepspeed_real.py)
# or named with --allow; a dangerous or inconclusive file fails (validate.fail_closed).
LOAD = Consumer("unsafe", who="DeepSpeed >= 0.16 TorchCheckpointEngine "
                "(torch.load(weights_only=False))")
# DeepSpeed 0.16.0 (PR #6751, commit 2e0c39b55 of 2024-11-19, first tag v0.16.0; checked in
# the deepspeedai/DeepSpeed history) made TorchCheckpointEngine.load and zero_to_fp32 pass
# weights_only=False explicitly (installed 0.19.8: runtime/checkpoint_engine/
# torch_checkpoint_engine.py `torch.load(path, map_location=..., weights_only=False)`). Older
# releases call torch.load without the argument, so torch's own default decides: False before
# torch 2.6, True from torch 2.6 (pytorch PR #137602) -- and then LossScaler / ZeroStageEnum in
# the optimizer states fail with "Unsupported global" (seed 001; axolotl #2610, ms-swift #5808).
EXPLICIT_UNSAFE_SINCE = (0, 16, 0)


def load_consumer(env: Env) -> Consumer:
    """How the DeepSpeed of `env` loads its own checkpoint files."""
    version = env.version("deepspeed")
    if env.at_least("deepspeed", EXPLICIT_UNSAFE_SINCE):
        return LOAD if version is None else Consumer(
            "unsafe", who=f"DeepSpeed {version} TorchCheckpointEngine "
            "(torch.load(weights_only=False))")
    torch = env.version("torch") or "?"
    if env.torch_default_weights_only():
        return Consumer("weights_only", who=f"DeepSpeed {version} TorchCheckpointEngine on "
                        f"torch {torch} (torch.load's default weights_only=True)")
    return Consumer("unsafe", who=f"DeepSpeed {version} on torch {torch} (torch.load's "
                    "default weights_only=False)")


def tags(d: DirView) -> list[str]:
    """Subdirectories that hold DeepSpeed model or optimizer states."""
    return [t for t in top_dirs(d) if is_tag(d, t)]


def is_tag(d: DirView, sub: str) -> bool:
    return any(MODEL_RE.fullmatch(f) or OPTIM_RE.fullmatch(f) for f in top_files(d, sub))


def latest_tag(d: DirView) -> str | None:
    return d.read_text("latest") if d.has("latest") else None


def tag_facts(d: DirView, tag: str) -> dict[str, Any]:
    """What a tag's file names and its first model/optim pickles say (nothing unpickled)."""
    files = top_files(d, tag)
    model = {f: m for f in files if (m := MODEL_RE.fullmatch(f))}
    optim = {f: m for f in files if (m := OPTIM_RE.fullmatch(f))}
    mroot = d.pickle_root(join(tag, min(model))) if model else None
    oroot = d.pickle_root(join(tag, min(optim))) if optim else None
    zero3 = any(m.group(1) is not None for m in model.values())
    stage = 3 if zero3 else (
        plain(lookup(mroot, "ds_config", "zero_optimization", "stage"))
        or plain(lookup(oroot, "optimizer_state_dict", "zero_stage"))
        or plain(lookup(oroot, "ds_config", "zero_optimization", "stage")))
    parts = lookup(oroot, "optimizer_state_dict", "partition_count")
    if isinstance(parts, SymList):  # ZeRO-1/2: one count per param group
        parts = max((p for p in parts if isinstance(p, int)), default=None)
    return {
        "model": model, "optim": optim, "zero3": zero3,
        "zero_stage": stage if stage is not None else (None if optim else 0),
        "dp_world_size": plain(lookup(mroot, "dp_world_size")),
        "mp_world_size": plain(lookup(mroot, "mp_world_size")),
        "partition_count": plain(parts),
        "global_steps": plain(lookup(mroot, "global_steps")),
        "ds_version": plain(lookup(mroot, "ds_version")) or plain(lookup(oroot, "ds_version")),
    }


def world_size(d: DirView) -> int | None:
    """dp * mp of this tag dir, or of the tag `latest` names, else of any tag: the size the
    run was saved with."""
    tag = "" if is_tag(d, "") else latest_tag(d)
    for t in ([tag] if tag is not None and is_tag(d, tag) else []) + tags(d):
        f = tag_facts(d, t)
        if isinstance(f["dp_world_size"], int):
            return f["dp_world_size"] * (f["mp_world_size"] or 1)
    return None


def check_tag(d: DirView, tag: str) -> list[Finding]:
    """Every model_states file present (CK401); optimizer partitions per model-parallel rank ==
    partition_count == dp_world_size (CK409)."""
    f = tag_facts(d, tag)
    if not f["model"]:
        return [missing(d, join(tag, "mp_rank_00_model_states.pt"),
                        "DeepSpeed load_checkpoint reads the model states of every tag")]
    out = []
    dp, mp = f["dp_world_size"], f["mp_world_size"]
    if f["zero3"]:  # one model_states per (dp, mp) rank
        have = {(int(m.group(1)), int(m.group(2))) for m in f["model"].values()}
        want = {(r, p) for r in range(dp or 0) for p in range(mp or 1)}
        names = [f"zero_pp_rank_{r}_mp_rank_{p:02d}_model_states.pt"
                 for r, p in sorted(want - have)]
    else:
        have_mp = {int(m.group(2)) for m in f["model"].values()}
        names = [f"mp_rank_{p:02d}_model_states.pt" for p in range(mp or 0) if p not in have_mp]
    out += [missing(d, join(tag, n), "written by every rank; DeepSpeed cannot load without it")
            for n in names]
    if not f["optim"] and not f["zero_stage"]:
        return out  # ZeRO-0: the optimizer lives in model_states
    by_mp: dict[int, set[int]] = {p: set() for p in range(mp or 1)}
    for m in f["optim"].values():
        by_mp.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    expect = f["partition_count"] or dp
    for p, ranks in sorted(by_mp.items()):
        n = expect or (max(ranks) + 1 if ranks else 0)
        counts = {"files": len(ranks), "partition_count": f["partition_count"],
                  "dp_world_size": dp}
        if len(ranks) != n or (dp and f["partition_count"] and dp != f["partition_count"]):
            gone = [r for r in range(n) if r not in ranks]
            out.append(Code.SHARD_COUNT.finding(
                d.outer(tag), f"mp_rank {p:02d}: {len(ranks)} optimizer partition file(s) for "
                f"partition_count={f['partition_count']}, dp_world_size={dp}"
                + (f"; missing dp rank(s) {gone[:8]}" if gone else ""),
                hint="a rank did not finish saving (zero_to_fp32 says 'Expected N of "
                     "*_optim_states.pt'); use the previous tag", **counts))
    return out


def tag_step(d: DirView, tag: str) -> int:
    """A tag's step: global_steps in its model states, else the digits ending its name."""
    step = tag_facts(d, tag)["global_steps"] if is_tag(d, tag) else None
    if not isinstance(step, int):
        m = re.search(r"(\d+)$", tag)
        step = int(m.group(1)) if m else -1
    return step


def tag_errors(d: DirView, tag: str) -> list[Finding]:
    """Why `tag` cannot be resumed: its completeness errors and its files' own errors
    (a truncated zip, an empty file). Empty when load_checkpoint(tag=tag) can read it."""
    if not is_tag(d, tag):
        return []
    found = check_tag(d, tag) + [x for f in top_files(d, tag)
                                 for x in d.info(join(tag, f)).findings]
    return [x for x in found if x.severity is Severity.ERROR]


def fallback_tag(d: DirView) -> str | None:
    """The newest complete tag older than the broken one `latest` names (None when `latest`
    is fine, absent, or no complete older tag exists): what to resume from instead."""
    tag = latest_tag(d)
    if tag is None or (is_tag(d, tag) and not tag_errors(d, tag)):
        return None
    limit = tag_step(d, tag) if is_tag(d, tag) else None
    good = [t for t in tags(d) if t != tag and not tag_errors(d, t)
            and (limit is None or tag_step(d, t) <= limit)]
    return max(good, key=lambda t: (tag_step(d, t), t), default=None)


def relink_latest(root: Path) -> tuple[str, str] | None:
    """(old, new) content of `<root>/latest` that makes load_checkpoint(tag=None) resume the
    newest complete tag, or None when nothing should change. `repair` calls this; the write
    (atomic, backed up) is repair's."""
    if not (root / "latest").is_file():  # cheap: most directories are not DeepSpeed saves
        return None
    d = DirView(root)
    if is_tag(d, "") or not d.has("latest"):
        return None
    new = fallback_tag(d)
    return (latest_tag(d) or "", new) if new else None


# the conversion scripts DeepSpeed copies next to the tags: load_checkpoint never runs them
SCRIPTS = frozenset({"zero_to_fp32.py", "zero_to_torch.py"})
SCRIPTS_UNREAD = Consumer("unused", who="load_checkpoint never reads the conversion scripts")


class DeepSpeed(LayoutBase):
    name = "deepspeed"
    framework = "deepspeed"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        top = set(top_files(d))
        return bool(tags(d)) or is_tag(d, "") or {"latest", "zero_to_fp32.py"} <= top

    def describe(self, d: DirView) -> LayoutInfo:
        tag = "" if is_tag(d, "") else latest_tag(d)
        all_tags = tags(d)
        details: dict[str, Any] = {"tag": tag or None, "tags": all_tags}
        if tag is not None and is_tag(d, tag):
            f = tag_facts(d, tag)
            details.update({k: f[k] for k in ("zero_stage", "dp_world_size", "mp_world_size",
                                              "ds_version")})
            details["world_size"] = world_size(d)
            step = f["global_steps"]
        else:
            step = None
        if step is None and tag:
            m = re.search(r"(\d+)$", tag)
            step = int(m.group(1)) if m else None
        return LayoutInfo(self.name, d.rel, step, details)

    def checks(self, d: DirView) -> list[Finding]:
        """`load_checkpoint(tag=None)` reads only the tag `latest` names: its problems are
        errors. Another tag's (a newer save cut short, an old one pruned half-way) are one
        warning each (CK422): the resume never reads them. When `latest` names a broken tag
        and an older tag is complete, CK423 says how to resume from that one."""
        if is_tag(d, ""):
            return check_tag(d, "")
        out = []
        tag = latest_tag(d)
        if tag is None:
            out.append(missing(d, "latest", "load_checkpoint(tag=None) then logs a warning and "
                               "loads nothing (no exception)",
                               "write the tag to resume from into 'latest'"))
        elif tag and not is_tag(d, tag):
            out.append(Code.LATEST_TAG_MISSING.finding(
                d.outer("latest"), f"'latest' names tag {tag!r}, which "
                + ("holds no model states" if tag in top_dirs(d) else "does not exist"),
                hint="point 'latest' at a complete tag: " + (", ".join(tags(d)) or "none left"),
                tag=tag))
        for t in tags(d):
            if tag is None or t == tag:
                out += check_tag(d, t)
                continue
            errors = tag_errors(d, t)
            if errors:
                first = errors[0]
                out.append(Code.NEWER_TAG_BROKEN.finding(
                    d.outer(t), f"tag {t} is incomplete ({first.code} {first.path}: "
                    f"{first.message}); load_checkpoint resumes from {tag!r}, which 'latest' "
                    "names, and never reads it", hint=f"delete {t} once {tag} is confirmed "
                    "good", tag=t, latest=tag, errors=[e.code for e in errors]))
        older = fallback_tag(d)
        if older is not None:
            out.append(Code.OLDER_TAG_RESUMABLE.finding(
                d.outer(""), f"'latest' names {tag!r}, which cannot be resumed; tag "
                f"{older} is complete: resume it with engine.load_checkpoint(<dir>, "
                f"tag={older!r})", hint=f"ckptdoctor repair {d.outer('') or '.'} points "
                f"'latest' at {older} (the old 'latest' is backed up)", tag=older, latest=tag))
        return out

    def consumer(self, d: DirView, rel: str) -> Consumer:
        if rel in SCRIPTS:
            return SCRIPTS_UNREAD
        first, _, rest = rel.partition("/")
        if rest and not is_tag(d, "") and is_tag(d, first) and first != latest_tag(d) \
                and latest_tag(d) is not None:
            return Consumer("unused", who=f"load_checkpoint reads tag {latest_tag(d)!r} "
                            f"('latest'), not {first}")
        return load_consumer(d.env)

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """The engine records ds_version/ds_config; its per-rank files have fixed suffixes."""
        if keys and keys & {"ds_version", "ds_config"}:
            return Evidence.CONTENT
        if keys is not None and base.endswith(("optim_states.pt", "model_states.pt")):
            return Evidence.NAME
        return None

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        """DeepSpeed's optimizer/model states (see `load_consumer` for the version history)."""
        if not (any(n.startswith("deepspeed.") for n in names) or "deepspeed" in lay
                or fnmatch(base, "*_optim_states.pt") or fnmatch(base, "*model_states.pt")):
            return None
        found = sorted(n.rpartition(".")[2] for n in names if n.startswith("deepspeed."))
        return ("DeepSpeed training state (optimizer_state_dict holds the live `loss_scaler` "
                "LossScaler object and `zero_stage` as ZeroStageEnum"
                + (f"; found {', '.join(found)}" if found else "") + ")",
                "DeepSpeed >= 0.16.0 (PR #6751) loads its own checkpoint files with "
                "weights_only=False, so upgrading DeepSpeed fixes the resume; older DeepSpeed "
                "on torch >= 2.6 fails here")
