"""The one multi-rank launcher of the tests: `world` real processes of a job script, each with
the variables torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on
localhost), run to the end; any rank's failure fails the test with that rank's stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(job: Path, *args: object, world: int, env: dict[str, str] | None = None,
           timeout: float = 900) -> list[str]:
    """Run `python job *args` on `world` ranks (gloo rendezvous on a free local port); the
    ranks' stdout, in rank order."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        full = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                **(env or {})}
        procs.append(subprocess.Popen([sys.executable, str(job), *map(str, args)], env=full,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for rank, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"rank {rank}: {err[-3000:]}"
    return [out for out, _ in outs]


def single(job: Path, *args: object, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python job *args` as one plain process: no launcher variables, so the frameworks
    see no distributed job."""
    full = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    full.update(env or {})
    proc = subprocess.run([sys.executable, str(job), *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
