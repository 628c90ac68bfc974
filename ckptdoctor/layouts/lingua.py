"""Meta Lingua: `<dump_dir>/checkpoints/<step:010d>/` with DCP (`model`, `optim`), params.json
(the run config, written by the master after the DCP save), train_state_<dp_rank:05d>.json per
data-parallel rank, and optionally consolidated/consolidated.pth.

Each rank resumes from the newest folder holding ITS train_state file, so a missing one makes
that rank skip the checkpoint while the others load it (divergence or a hang): an error."""

from __future__ import annotations

import re
from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo
from .base import (
    DCP_CONSUMER,
    Consumer,
    DirView,
    LayoutBase,
    check_dcp,
    dcp_details,
    dcp_ranks,
    is_dcp,
    load_json,
    numbered,
    top_files,
)

TS_RE = r"train_state_(\d+)\.json"
UNREAD = Consumer("unused", who="lingua resume (CheckpointManager.load reads the DCP state and "
                  "train_state_<dp_rank>.json only)")
CONSOLIDATED = Consumer("weights_only", who="lingua load_consolidated_model "
                        "(torch.load(weights_only=True))")


def dp_size(d: DirView, params: Any) -> int | None:
    """Data-parallel size: the larger of params.json's dp_shard * dp_replicate and the ranks
    that wrote DCP shards / tp_size. Every rank writes a `__<rank>_0.distcp`, so the shards
    say how many ranks saved even when params.json is missing, stale or partial."""
    dist = params.get("distributed") if isinstance(params, dict) else None
    dist = dist if isinstance(dist, dict) else {}
    shard, rep, tp = (dist.get(k) for k in ("dp_shard", "dp_replicate", "tp_size"))
    tp = tp if isinstance(tp, int) and tp > 0 else 1
    declared = shard * rep if isinstance(shard, int) and isinstance(rep, int) \
        and shard > 0 and rep > 0 else 0
    ranks = dcp_ranks(d)
    return max(declared, len(ranks) // tp) or None


def step_dir(d: DirView) -> bool:
    """`checkpoints/<step:010d>/`: Lingua's own naming, which still identifies a save killed
    before it wrote params.json and the train_state files (measured: resume then fails)."""
    return re.fullmatch(r"\d{10}", d.root.name) is not None and d.root.parent.name == "checkpoints"


class Lingua(LayoutBase):
    name = "lingua"
    framework = "lingua"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        names = top_files(d)
        return is_dcp(d) and (bool(numbered(names, TS_RE)) or "params.json" in names
                              or step_dir(d))

    def describe(self, d: DirView) -> LayoutInfo:
        states = numbered(top_files(d), TS_RE)
        state = d.read_json(states[min(states)]) if states else None
        state = state if isinstance(state, dict) else {}
        params = d.read_json("params.json")
        step = state.get("step")
        if not isinstance(step, int):
            step = int(d.root.name) if re.fullmatch(r"\d{10}", d.root.name) else None
        details: dict[str, Any] = {
            "acc_step": state.get("acc_step"), "dp_world_size": len(states) or None,
            "consolidated": d.has("consolidated/consolidated.pth"),
            "run_name": params.get("name") if isinstance(params, dict) else None,
            **dcp_details(d)}
        return LayoutInfo(self.name, d.rel, step, {k: v for k, v in details.items()
                                                   if v is not None})

    def checks(self, d: DirView) -> list[Finding]:
        out = check_dcp(d)
        params = d.read_json("params.json") if d.has("params.json") else None
        if not d.has("params.json"):  # resume takes its config from the command line
            out.append(Code.UNREAD_MISSING.finding(
                d.outer("params.json"), "params.json is missing: resume does not read it "
                "(CheckpointManager.load restores DCP state and train_state only), but "
                "consolidation and eval need it; the master writes it after the DCP save",
                hint="copy params.json from another step of the same run"))
        else:
            out += load_json(d, "params.json", "consolidation and eval read it")[1]
        states = numbered(top_files(d), TS_RE)
        for rel in states.values():
            out += load_json(d, rel, "the rank cannot restore its step and data position")[1]
        want = max(dp_size(d, params) or 0, max(states, default=-1) + 1)
        for r in range(want):
            if r not in states:
                out.append(Code.MISSING_FILE.finding(
                    d.outer(f"train_state_{r:05d}.json"), f"train_state_{r:05d}.json is "
                    f"missing: data-parallel rank {r} skips this checkpoint while the others "
                    "load it, so the job diverges or hangs", hint="resume from an earlier "
                    "step that has every rank's train_state", rank=r))
        return out

    def consumer(self, d: DirView, rel: str) -> Consumer:
        if rel == "params.json" or rel.startswith("consolidated/"):
            return UNREAD  # resume never opens them (consolidation / eval do)
        return CONSOLIDATED if rel.endswith(".pth") else DCP_CONSUMER
