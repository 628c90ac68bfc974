"""`python -m ckptdoctor.demo DIR`: build a small training run that fails the way users see it
after torch 2.6, then walk through inspect -> validate -> latest -> repair -> validate.

The run mimics an HF Trainer output dir written by plain torch + numpy (so the demo needs no
extra packages): checkpoint-20 is complete but its rng_state.pth pickles numpy's RNG state (the
`Unsupported global: GLOBAL numpy...` error on resume with plain torch.load), checkpoint-30 was
cut short by an out-of-memory kill (truncated optimizer.pt, no trainer_state.json)."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path


def build(run: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (20, 30):
        for _ in range(10):
            loss = model(torch.randn(8, 16)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  ckpt / "model.safetensors", metadata={"format": "pt"})
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        torch.save(sched.state_dict(), ckpt / "scheduler.pt")
        # exactly what transformers' Trainer._save_rng_state writes on a CPU run
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                    "cpu": torch.random.get_rng_state()}, ckpt / "rng_state.pth")
        (ckpt / "config.json").write_text(json.dumps({"model_type": "demo"}))
        if step == 20:
            (ckpt / "trainer_state.json").write_text(json.dumps(
                {"global_step": step, "epoch": 1.0, "log_history": [
                    {"step": step, "loss": loss.item(), "learning_rate": 1e-3}]}))
        else:  # the OOM kill: optimizer.pt cut in half, trainer_state.json never written
            data = (ckpt / "optimizer.pt").read_bytes()
            (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])


def run_cli(*args: str) -> int:
    cmd = [sys.executable, "-m", "ckptdoctor", *args]
    print(f"\n$ ckptdoctor {' '.join(shlex.quote(a) for a in args)}", flush=True)
    rc = subprocess.call(cmd)
    print(f"[exit {rc}]", flush=True)
    return rc


def main(argv: list[str]) -> int:
    run = Path(argv[0] if argv else "demo-out") / "run"
    if run.exists():
        print(f"{run} exists; remove it first", file=sys.stderr)
        return 2
    build(run)
    print(f"built a demo training run in {run}")
    good = str(run / "checkpoint-20")
    steps = [
        (("inspect", str(run)), None),
        (("inspect", str(run / "checkpoint-20" / "rng_state.pth")), 0),
        (("validate", str(run / "checkpoint-30")), 1),
        (("validate", "--consumer", "torch", good), 1),
        (("latest", str(run)), 0),
        (("repair", "--yes", "--consumer", "torch", good), 0),
        (("validate", "--consumer", "torch", good), 0),
    ]
    failed = []
    for args, expected in steps:
        rc = run_cli(*args)
        if expected is not None and rc != expected:
            failed.append((args, rc, expected))
    for args, rc, expected in failed:
        print(f"demo step {' '.join(args)} exited {rc}, expected {expected}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
