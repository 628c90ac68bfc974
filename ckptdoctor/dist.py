"""Run under torchrun: `torchrun --nproc_per_node N [--nnodes M ...] -m ckptdoctor validate
--deep PATH` spreads the byte-reading pass over every rank.

Every rank reads the metadata (cheap, identical on every rank), then streams only the files
assigned to it (`assign`: per-rank files to the rank with the writer's number, the rest
balanced by size), and the per-file outcomes are gathered to every rank over gloo as JSON
(never pickle). Every rank then holds the same findings; only rank 0 prints the report, and
every rank exits with the same code (`agree`). Without WORLD_SIZE > 1 nothing here runs and
torch is not imported."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .model import FileInfo, Finding, Severity

if TYPE_CHECKING:  # imported where outcomes are built: static paths never load stream.py
    from .stream import FileOutcome

# The rank that wrote a per-rank file, from its name: DCP `__<rank>_<n>.distcp`, DeepSpeed
# `*zero_pp_rank_<dp>_mp_rank_<mp>_*` (dp rank first) and `mp_rank_<mp>_*`, generic `*_rank_<r>*`.
WRITER_PATTERNS = (
    re.compile(r"(?:^|/)__(\d+)_\d+\.distcp$"),
    re.compile(r"zero_pp_rank_(\d+)_"),
    re.compile(r"(?:^|[/_])rank_?(\d+)"),
    re.compile(r"mp_rank_(\d+)"),
)


def env_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    try:
        return int(os.environ.get("RANK", "0")) if env_world() > 1 else 0
    except ValueError:
        return 0


def env_world() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def writer_rank(rel: str) -> int | None:
    for pat in WRITER_PATTERNS:
        m = pat.search(rel)
        if m:
            return int(m.group(1))
    return None


def assign(files: Sequence[FileInfo], world: int) -> list[list[FileInfo]]:
    """Split files over `world` ranks: a per-rank file goes to rank (writer % world) (the same
    rank number on the same node when the validation job mirrors the training job's layout);
    every other file to the least-loaded rank, largest first. Deterministic: every rank
    computes the same split from the same metadata."""
    out: list[list[FileInfo]] = [[] for _ in range(world)]
    load = [0] * world
    rest = []
    for f in files:
        w = writer_rank(f.path)
        if w is None:
            rest.append(f)
        else:
            out[w % world].append(f)
            load[w % world] += f.size
    for f in sorted(rest, key=lambda f: (-f.size, f.path)):
        r = min(range(world), key=lambda i: (load[i], i))
        out[r].append(f)
        load[r] += f.size
    return out


def _outcome_json(o: FileOutcome) -> dict:
    return {"rel": o.rel, "sha256": o.sha256, "nbytes": o.nbytes,
            "findings": [f.to_json() for f in o.findings]}


def _outcome(d: dict) -> FileOutcome:
    from .stream import FileOutcome

    return FileOutcome(str(d["rel"]), [
        Finding(f["code"], Severity.parse(f["severity"]), f["path"], f["message"], f["hint"],
                f.get("detail", {})) for f in d["findings"]], d["sha256"], int(d["nbytes"]))


class Group:
    """The gloo process group torchrun set up the environment for."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def assign(self, files: Sequence[FileInfo]) -> list[FileInfo]:
        return assign(files, self.world)[self.rank]

    def gather(self, outcomes: list[FileOutcome]) -> list[FileOutcome]:
        """Every rank's outcomes, on every rank (JSON bytes over all_gather; no pickle)."""
        import torch

        data = json.dumps([_outcome_json(o) for o in outcomes]).encode()
        n = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._dist.all_gather(sizes, n)
        top = max(int(s.item()) for s in sizes)
        mine = torch.zeros(top, dtype=torch.uint8)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else 0
        bufs = [torch.zeros(top, dtype=torch.uint8) for _ in range(self.world)]
        self._dist.all_gather(bufs, mine)
        out: list[FileOutcome] = []
        for buf, size in zip(bufs, sizes, strict=True):
            out.extend(_outcome(d) for d in json.loads(bytes(buf[: int(size.item())].numpy())))
        return out

    def agree(self, code: int) -> int:
        """The exit code every rank returns: the worst any rank saw."""
        import torch

        t = torch.tensor([code], dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return int(t.item())

    def close(self) -> None:
        try:
            self._dist.barrier()
        finally:
            self._dist.destroy_process_group()


def from_env() -> Group | None:
    """A Group when launched by torchrun with more than one rank, else None (no torch)."""
    if env_world() <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    return Group()
