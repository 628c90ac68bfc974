"""The oracle's subprocess side: each framework's REAL save and REAL resume on a tiny model.

    python -m tests.oracle.jobs serve FRAMEWORK

imports the framework once, then reads one JSON request per line on stdin
(``{"op": "save"|"resume", "ckpt": ..., "work": ..., "variant": ...}``) and answers
one JSON line per request on stdout.  Every request runs in a fresh ``os.fork()``
child (a "zygote": the heavy imports are paid once, the state of each save/resume
is not shared), so a resume that raises, hangs on a lock, or is killed is
isolated exactly like a fresh ``python`` process would be.  The parent runs no
torch op before forking (torch's thread pools are created lazily, in the child).

A resume answers ``{"resumed": true, "losses": [...]}`` -- the training losses of
the next two steps after the checkpoint -- or ``{"resumed": false, "error": ...}``
when the framework raised or silently loaded nothing.

Variants of ``save``:
  ``clean``       the reference checkpoint;
  ``nan``         the same run, but one weight is NaN when the framework saves it
                  (a diverged step), so the file is written by the framework itself;
  ``kill:<pat>``  the same run, SIGKILLed by itself the moment the framework opens a
                  file whose name matches ``<pat>`` (fnmatch) for writing: a real save
                  cut short at a deterministic point.  The hook wraps ``builtins.open``
                  / ``torch.save`` only to *trigger* the kill; it never changes what
                  is written.

Lingua and torchtitan cannot be installed here; their "resume" follows their
loaders (lingua/checkpoint.py ``CheckpointManager.get_last_step_path``/``load``,
torchtitan components/checkpoint.py ``_find_load_step``/``load``) over the real
``torch.distributed.checkpoint``: see :func:`lingua_resume` and :func:`titan_resume`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import math
import os
import signal
import socket
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS_BEFORE = 2  # optimizer steps before the checkpoint
STEPS_AFTER = 2  # steps run after resuming; their losses are compared

# --------------------------------------------------------------------------- #
# kill hook
# --------------------------------------------------------------------------- #


def _install_kill(spec: str) -> None:
    """SIGKILL this process when the ``n``-th file whose basename matches ``pattern`` is opened
    for writing (``spec`` = ``pattern`` or ``pattern@n``).  The hooks only trigger the kill;
    what is written is untouched."""
    import builtins
    import io as _io

    import torch

    pattern, _, nth = spec.partition("@")
    left = [int(nth or 1)]

    def check(target: Any) -> None:
        if isinstance(target, (str, os.PathLike)) and fnmatch.fnmatch(
            os.path.basename(os.fspath(target)), pattern
        ):
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    real_open = builtins.open

    def open_(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+"):
            check(file)
        return real_open(file, mode, *a, **kw)

    builtins.open = open_
    _io.open = open_
    real_save = torch.save

    def save(obj, f, *a, **kw):
        check(f)
        return real_save(obj, f, *a, **kw)

    torch.save = save
    real_rename = os.rename
    real_replace = os.replace

    def rename(src, dst, *a, **kw):  # a temp file renamed into place is a write too
        check(dst)
        return real_rename(src, dst, *a, **kw)

    def replace(src, dst, *a, **kw):
        check(dst)
        return real_replace(src, dst, *a, **kw)

    os.rename = rename
    os.replace = replace


def _poison(module: Any) -> str:
    """Make the first floating weight NaN in place (a diverged step); return its name."""
    import torch

    for name, p in module.named_parameters():
        if p.is_floating_point() and p.dim() >= 2 and p.requires_grad:
            with torch.no_grad():
                p.view(-1)[0] = float("nan")
            return name
    raise RuntimeError("no weight to poison")


def _quiet_logs() -> None:
    import logging

    warnings.simplefilter("ignore")
    for name in ("transformers", "accelerate", "pytorch_lightning", "lightning", "lightning_fabric",
                 "lightning.pytorch", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finite(xs: list[float]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in xs]


# --------------------------------------------------------------------------- #
# HF Trainer (plain and PEFT)
# --------------------------------------------------------------------------- #


HF_DEEPSPEED = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "zero_optimization": {"stage": 2}, "bf16": {"enabled": False},
                "optimizer": {"type": "AdamW", "params": {"lr": "auto", "torch_adam": True}}}


def _hf_trainer(
    out: Path, steps: int, peft: bool, callbacks: list | None = None, deepspeed: bool = False
):
    from transformers import Trainer, TrainingArguments, set_seed

    from tests.fixtures import factory

    extra: dict[str, Any] = {}
    # ZeRO-2 through the Trainer's own DeepSpeed integration (CPU, gloo, world size 1)
    if deepspeed:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                           "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        extra["deepspeed"] = HF_DEEPSPEED
    set_seed(0)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(factory.tiny_llama(0),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    else:
        model = factory.tiny_gpt2(0)
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, save_strategy="steps", save_steps=STEPS_BEFORE,
        logging_strategy="steps", logging_steps=1, per_device_train_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=0, seed=0, use_cpu=True, report_to=[], dataloader_num_workers=0,
        dataloader_pin_memory=False, disable_tqdm=True, **extra,
    )
    return Trainer(
        model=model, args=args, train_dataset=factory.tiny_dataset(seed=0), callbacks=callbacks
    )


def _hf_save(work: Path, variant: str, peft: bool, deepspeed: bool = False) -> str:
    from transformers import TrainerCallback

    callbacks = []
    if variant == "nan":
        class Poison(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                if state.global_step == STEPS_BEFORE:
                    _poison(model)
                return control

        callbacks.append(Poison())
    trainer = _hf_trainer(work, STEPS_BEFORE, peft, callbacks, deepspeed)
    trainer.train()
    return str(work / f"checkpoint-{STEPS_BEFORE}")


def _hf_resume(ckpt: Path, work: Path, peft: bool, deepspeed: bool = False) -> list[float]:
    trainer = _hf_trainer(work, STEPS_BEFORE + STEPS_AFTER, peft, None, deepspeed)
    trainer.args.save_strategy = "no"
    trainer.train(resume_from_checkpoint=str(ckpt))
    return [float(h["loss"]) for h in trainer.state.log_history
            if "loss" in h and h["step"] > STEPS_BEFORE]


# --------------------------------------------------------------------------- #
# Accelerate
# --------------------------------------------------------------------------- #


def _acc_objects():
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(8, 4)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=1, gamma=0.9)
    model, optim, sched = accelerator.prepare(model, optim, sched)
    return accelerator, model, optim, sched


def _acc_steps(accelerator, model, optim, sched, n: int) -> list[float]:
    import torch

    losses = []
    for _ in range(n):
        x = torch.randn(3, 8)  # drawn from the (restored) torch RNG
        loss = (model(x) - 1).pow(2).mean()
        accelerator.backward(loss)
        optim.step()
        sched.step()
        optim.zero_grad()
        losses.append(float(loss))
    return losses


def _acc_save(work: Path, variant: str) -> str:
    objs = _acc_objects()
    _acc_steps(*objs, STEPS_BEFORE)
    if variant == "nan":
        _poison(objs[1])
    objs[0].save_state(str(work / "state"))
    return str(work / "state")


def _acc_resume(ckpt: Path, work: Path) -> list[float]:
    import random

    import numpy as np
    import torch

    objs = _acc_objects()
    np.random.seed(12345)
    random.seed(12345)
    torch.manual_seed(12345)
    objs[0].load_state(str(ckpt))
    return _acc_steps(*objs, STEPS_AFTER)


# --------------------------------------------------------------------------- #
# Lightning
# --------------------------------------------------------------------------- #


@functools.cache
def _lit_cls():
    import pytorch_lightning as pl
    import torch

    class OracleLit(pl.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.losses.append(float(loss))
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    return OracleLit


def _lit_run(work: Path, epochs: int, ckpt_path: str | None, poison: bool = False):
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(
        torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False)
    model = _lit_cls()()
    callbacks: list[Any] = [ModelCheckpoint(dirpath=work / "checkpoints", save_last=True)]
    if poison:
        class Poison(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                _poison(pl_module)

        callbacks.insert(0, Poison())
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(work),
                         callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, model


def _lit_save(work: Path, variant: str) -> str:
    _lit_run(work, 1, None, poison=variant == "nan")  # one epoch = STEPS_BEFORE batches
    return str(work / "checkpoints" / "last.ckpt")


def _lit_resume(ckpt: Path, work: Path) -> list[float]:
    trainer, model = _lit_run(work, 2, str(ckpt))
    if trainer.global_step != STEPS_BEFORE + STEPS_AFTER:
        raise RuntimeError(
            f"did not continue from the checkpoint: global_step {trainer.global_step}"
        )
    return model.losses


# --------------------------------------------------------------------------- #
# DeepSpeed engine (ZeRO-2, bf16, CPU, gloo, world size 1)
# --------------------------------------------------------------------------- #


def _ds_engine():
    import deepspeed
    import torch

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    deepspeed.init_distributed(dist_backend="gloo")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=cfg
    )
    return engine


def _ds_steps(engine, n: int) -> list[float]:
    import torch

    losses = []
    for _ in range(n):
        g = torch.Generator().manual_seed(1000 + engine.global_steps)  # DeepSpeed saves no RNG
        x = torch.randn(2, 4, generator=g, dtype=torch.float32).to(torch.bfloat16)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    return losses


def _ds_save(work: Path, variant: str) -> str:
    engine = _ds_engine()
    _ds_steps(engine, STEPS_BEFORE)
    if variant == "nan":
        _poison(engine.module)
        # ZeRO keeps an fp32 master copy in the optimizer: poison it too (a diverged step does)
        for group in engine.optimizer.single_partition_of_fp32_groups:
            group.data.view(-1)[0] = float("nan")
    out = work / "ckpt"
    engine.save_checkpoint(str(out))
    if variant == "newer":  # one more step, and a second save (a newer tag)
        _ds_steps(engine, 1)
        engine.save_checkpoint(str(out))
    return str(out)


def _ds_resume(ckpt: Path, work: Path) -> list[float]:
    engine = _ds_engine()
    path, _ = engine.load_checkpoint(str(ckpt))
    if path is None:
        raise RuntimeError("DeepSpeed load_checkpoint returned (None, None): nothing loaded")
    if engine.global_steps != STEPS_BEFORE:
        raise RuntimeError(f"loaded step {engine.global_steps}, not {STEPS_BEFORE}")
    return _ds_steps(engine, STEPS_AFTER)


# --------------------------------------------------------------------------- #
# DeepSpeed engine on 2 ranks (ZeRO-2, bf16, CPU, gloo): one forked process per rank
# --------------------------------------------------------------------------- #

WORLD = 2
RANK_TIMEOUT = 120  # seconds before a rank stuck in a collective with a dead peer is killed


def _ds2_engine(rank: int, port: int):
    import datetime

    import deepspeed
    import torch

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    deepspeed.init_distributed(
        dist_backend="gloo", timeout=datetime.timedelta(seconds=RANK_TIMEOUT // 2)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=cfg
    )
    return engine


def _ds2_rank_steps(engine, rank: int, n: int) -> list[float]:
    import torch

    losses = []
    for _ in range(n):
        g = torch.Generator().manual_seed(1000 * (rank + 1) + engine.global_steps)
        x = torch.randn(2, 4, generator=g).to(torch.bfloat16)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    return losses


def _ranks(work: Path, fn: Callable[[int, int], Any], kill: dict[int, str]) -> list[Any]:
    """Run ``fn(rank, port)`` in WORLD forked processes; return each rank's result (or its
    error)."""
    port = _free_port()
    pids = {}
    for rank in range(WORLD):
        res = work / f"rank{rank}.json"
        res.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:
            try:
                log = os.open(
                    work / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
                )
                os.dup2(log, 1)
                os.dup2(log, 2)
                if rank in kill:
                    _install_kill(kill[rank])
                try:
                    value = {"ok": fn(rank, port)}
                except BaseException as e:  # the failure is the result
                    traceback.print_exc()
                    first = str(e).splitlines()[0] if str(e) else ""
                    value = {"error": f"{type(e).__name__}: {first}"[:300]}
                res.write_text(json.dumps(value))
            finally:
                os._exit(0)
        pids[rank] = pid
    import time

    deadline = time.monotonic() + RANK_TIMEOUT
    status = {}
    while len(status) < WORLD:
        for rank, pid in pids.items():
            if rank not in status:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[rank] = os.waitstatus_to_exitcode(st)
        if time.monotonic() > deadline:
            for rank, pid in pids.items():
                if rank not in status:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status[rank] = "hung: killed after the timeout"
        time.sleep(0.1)
    out = []
    for rank in range(WORLD):
        res = work / f"rank{rank}.json"
        out.append(json.loads(res.read_text()) if res.is_file()
                   else {"error": f"rank {rank} died ({status[rank]})"})
    return out


def _ds2_save(work: Path, variant: str, kill: dict[int, str] | None = None) -> str:
    out = work / "ckpt"

    def save(rank: int, port: int) -> str:
        engine = _ds2_engine(rank, port)
        _ds2_rank_steps(engine, rank, STEPS_BEFORE)
        engine.save_checkpoint(str(out))
        return str(out)

    results = _ranks(work, save, kill or {})
    bad = [r["error"] for r in results if "ok" not in r]
    if bad:
        raise RuntimeError("; ".join(bad))
    return str(out)


def _ds2_resume(ckpt: Path, work: Path) -> list[float]:
    def resume(rank: int, port: int) -> list[float]:
        engine = _ds2_engine(rank, port)
        path, _ = engine.load_checkpoint(str(ckpt))
        if path is None:
            raise RuntimeError("DeepSpeed load_checkpoint returned (None, None): nothing loaded")
        if engine.global_steps != STEPS_BEFORE:
            raise RuntimeError(f"loaded step {engine.global_steps}, not {STEPS_BEFORE}")
        return _ds2_rank_steps(engine, rank, STEPS_AFTER)

    results = _ranks(work, resume, {})
    bad = [f"rank {i}: {r['error']}" for i, r in enumerate(results) if "ok" not in r]
    if bad:
        raise RuntimeError("; ".join(bad))
    return [x for r in results for x in r["ok"]]


# --------------------------------------------------------------------------- #
# FSDP2 (fully_shard) on 2 gloo ranks, saved and loaded with DCP
# --------------------------------------------------------------------------- #


def _fsdp_objects(rank: int, port: int):
    import datetime

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD)})
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=RANK_TIMEOUT // 2))
    mesh = init_device_mesh("cpu", (WORLD,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _fsdp_steps(model, optim, rank: int, start: int, n: int) -> list[float]:
    import torch

    losses = []
    for step in range(start, start + n):
        g = torch.Generator().manual_seed(100 * rank + step)
        optim.zero_grad()
        loss = model(torch.randn(4, 8, generator=g)).pow(2).mean()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def _fsdp_save(work: Path, variant: str, kill: dict[int, str] | None = None) -> str:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    out = work / "ckpt"

    def save(rank: int, port: int) -> str:
        model, optim = _fsdp_objects(rank, port)
        _fsdp_steps(model, optim, rank, 0, STEPS_BEFORE)
        if variant == "nan":
            import torch

            with torch.no_grad():  # every rank poisons its own shard of the first weight
                model[0].weight.to_local().view(-1)[0] = float("nan")
        msd, osd = get_state_dict(model, optim)
        dcp.save(
            {"model": msd, "optim": osd, "train_state": {"step": STEPS_BEFORE}},
            checkpoint_id=str(out),
        )
        return str(out)

    results = _ranks(work, save, kill or {})
    bad = [r["error"] for r in results if "ok" not in r]
    if bad:
        raise RuntimeError("; ".join(bad))
    return str(out)


def _fsdp_resume(ckpt: Path, work: Path) -> list[float]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def resume(rank: int, port: int) -> list[float]:
        model, optim = _fsdp_objects(rank, port)
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd, "train_state": {"step": 0}}
        dcp.load(state, checkpoint_id=str(ckpt))
        set_state_dict(
            model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        step = state["train_state"]["step"]
        if step != STEPS_BEFORE:
            raise RuntimeError(f"train_state step {step}")
        return _fsdp_steps(model, optim, rank, step, STEPS_AFTER)

    results = _ranks(work, resume, {})
    bad = [f"rank {i}: {r['error']}" for i, r in enumerate(results) if "ok" not in r]
    if bad:
        raise RuntimeError("; ".join(bad))
    return [x for r in results for x in r["ok"]]


# --------------------------------------------------------------------------- #
# plain DCP (torch.distributed.checkpoint, single process)
# --------------------------------------------------------------------------- #


def _dcp_objects():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, optim


def _dcp_steps(model, optim, start: int, n: int) -> list[float]:
    import torch

    losses = []
    for step in range(start, start + n):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(4, 8, generator=g)
        optim.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        optim.step()
        losses.append(float(loss))
    return losses


def _dcp_save(work: Path, variant: str) -> str:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = _dcp_objects()
    _dcp_steps(model, optim, 0, STEPS_BEFORE)
    if variant == "nan":
        _poison(model)
    msd, osd = get_state_dict(model, optim)
    out = work / "ckpt"
    dcp.save({"model": msd, "optim": osd, "train_state": {"step": STEPS_BEFORE}},
             checkpoint_id=str(out),
             no_dist=True)
    return str(out)


def _dcp_resume(ckpt: Path, work: Path) -> list[float]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optim = _dcp_objects()
    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd, "train_state": {"step": 0}}
    dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    step = state["train_state"]["step"]
    if step != STEPS_BEFORE:
        raise RuntimeError(f"train_state step {step}")
    return _dcp_steps(model, optim, step, STEPS_AFTER)


# --------------------------------------------------------------------------- #
# Lingua-style and torchtitan-style (hand-built writers in tests/fixtures/factory.py)
# --------------------------------------------------------------------------- #


def _surrogate_losses(model, optim, sched, n: int, seed: int = 0) -> list[float]:
    """factory._train_steps' loss (targets from seed+1), returning the losses."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    targets = {k: torch.randn(p.shape, generator=g) for k, p in model.named_parameters()}
    losses = []
    for _ in range(n):
        optim.zero_grad()
        loss = sum(((p - targets[k]) ** 2).mean() for k, p in model.named_parameters())
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss))
    return losses


def _lingua_objects():
    import torch

    from tests.fixtures import factory

    model = factory._module_from_shapes(factory._llama_native_shapes(), 0)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, functools.partial(factory._warmup_lambda, warmup=5)
    )
    return model, optim, sched


def _lingua_save(work: Path, variant: str) -> str:
    from tests.fixtures import factory

    if variant == "nan":
        raise NotImplementedError("factory.make_lingua has no NaN variant")
    factory.make_lingua(work / "dump", step=STEPS_BEFORE)
    return str(work / "dump" / "checkpoints" / f"{STEPS_BEFORE:010d}")


def lingua_resume(ckpt: Path, work: Path, dp_rank: int = 0) -> list[float]:
    """lingua/checkpoint.py: ``get_last_step_path(dp_rank)`` takes the newest step folder that
    holds ``train_state_{dp_rank:05d}.json``; with none the rank starts from scratch.  ``load``
    reads that json into the train state, then ``dcp.load({"model","optim"})`` and
    ``set_state_dict``.  ``params.json`` is not read on resume."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    root = ckpt.parent
    candidates = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()
                         and (p / f"train_state_{dp_rank:05d}.json").is_file()),
                        key=lambda p: int(p.name))
    if not candidates:
        raise RuntimeError(
            "no step folder with this rank's train_state: Lingua starts from scratch"
        )
    path = candidates[-1]
    model, optim, sched = _lingua_objects()
    train_state = json.loads((path / f"train_state_{dp_rank:05d}.json").read_text())
    sched.load_state_dict(train_state["scheduler"])
    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return _surrogate_losses(model, optim, sched, STEPS_AFTER)


def _titan_save(work: Path, variant: str) -> str:
    from tests.fixtures import factory

    if variant == "nan":
        raise NotImplementedError("factory.make_torchtitan has no NaN variant")
    factory.make_torchtitan(work / "dump", step=STEPS_BEFORE)
    return str(work / "dump" / "checkpoint" / f"step-{STEPS_BEFORE}")


def titan_resume(ckpt: Path, work: Path) -> list[float]:
    """torchtitan CheckpointManager: ``_find_load_step`` takes the largest ``step-N`` folder that
    holds ``.metadata``; ``load`` runs ``dcp.load`` over the flattened model FQNs plus
    ``optimizer`` (flattened), ``lr_scheduler``, ``dataloader`` and ``train_state``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from tests.fixtures import factory

    root = ckpt.parent
    steps = [int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / ".metadata").is_file()]
    if not steps:
        raise RuntimeError("no step folder with .metadata: torchtitan starts from scratch")
    path = root / f"step-{max(steps)}"
    model = factory._module_from_shapes(factory._llama_native_shapes(), 0)
    optim = torch.optim.AdamW(model.parameters(), lr=8e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, functools.partial(factory._warmup_lambda, warmup=2)
    )
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    state: dict[str, Any] = dict(get_model_state_dict(model))
    state.update({"optimizer": get_optimizer_state_dict(model, optim, options=opts),
                  "lr_scheduler": sched.state_dict(),
                  "dataloader": {"dp_rank_0": b"", "world_size": 1},
                  "train_state": {"step": 0, "ntokens_seen": 0}})
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    set_model_state_dict(model, {k: v for k, v in state.items()
                                 if k not in ("optimizer", "lr_scheduler", "dataloader",
                                              "train_state")})
    set_optimizer_state_dict(model, optim, state["optimizer"], options=opts)
    sched.load_state_dict(state["lr_scheduler"])
    if state["train_state"]["step"] != STEPS_BEFORE:
        raise RuntimeError(f"train_state step {state['train_state']['step']}")
    return _surrogate_losses(model, optim, sched, STEPS_AFTER)


# --------------------------------------------------------------------------- #
# registry and zygote
# --------------------------------------------------------------------------- #

FRAMEWORKS: dict[str, tuple[Callable[..., str], Callable[[Path, Path], list[float]],
                            tuple[str, ...]]] = {
    "hf_trainer": (lambda w, v: _hf_save(w, v, False), lambda c, w: _hf_resume(c, w, False),
                   ("transformers",)),
    "hf_peft": (lambda w, v: _hf_save(w, v, True), lambda c, w: _hf_resume(c, w, True),
                ("transformers", "peft")),
    "hf_deepspeed": (lambda w, v: _hf_save(w, v, False, True),
                     lambda c, w: _hf_resume(c, w, False, True),
                     ("transformers", "deepspeed")),
    "accelerate": (_acc_save, _acc_resume, ("accelerate",)),
    "lightning": (_lit_save, _lit_resume, ("pytorch_lightning",)),
    "deepspeed": (_ds_save, _ds_resume, ("deepspeed",)),
    "deepspeed_2r": (_ds2_save, _ds2_resume, ("deepspeed",)),
    "fsdp2": (_fsdp_save, _fsdp_resume, ("torch.distributed.checkpoint", "torch.distributed.fsdp")),
    "dcp": (_dcp_save, _dcp_resume, ("torch.distributed.checkpoint",)),
    "lingua": (_lingua_save, lingua_resume, ("torch.distributed.checkpoint",)),
    "torchtitan": (_titan_save, titan_resume, ("torch.distributed.checkpoint",)),
}


def _child(framework: str, req: dict[str, Any]) -> None:
    work = Path(req["work"])
    work.mkdir(parents=True, exist_ok=True)
    log = os.open(work / "job.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    _quiet_logs()
    save, resume, _ = FRAMEWORKS[framework]
    result: dict[str, Any]
    try:
        if req["op"] == "save":
            variant = req.get("variant", "clean")
            if variant.startswith("kill-rank"):  # "kill-rank<r>:<spec>" (2-rank frameworks)
                rank, _, spec = variant[len("kill-rank"):].partition(":")
                save(work, "clean", {int(rank): spec})
                raise RuntimeError("unreachable: a killed rank makes the save fail")
            if "kill:" in variant:  # "kill:<spec>" or "newer-kill:<spec>"
                base, _, spec = variant.partition("kill:")
                _install_kill(spec)
                variant = base.rstrip("-") or "clean"
            result = {"ckpt": save(work, variant)}
        else:
            losses = resume(Path(req["ckpt"]), work)
            result = {"resumed": True, "losses": _finite(losses)}
    except BaseException as e:  # the framework's failure IS the result
        traceback.print_exc()
        result = {
            "resumed": False,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300],
        }
    Path(req["out"]).write_text(json.dumps(result))


def serve(framework: str) -> None:
    import importlib

    with contextlib.suppress(Exception):  # die with the test session (Linux prctl PR_SET_PDEATHSIG)
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    # the protocol gets a private copy of stdout; whatever the libraries print goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for mod in FRAMEWORKS[framework][2]:
        importlib.import_module(mod)
    import torch  # noqa: F401  (imported, no op run: safe to fork)

    out.write(json.dumps({"ready": framework}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        res_file = Path(req["work"]) / "result.json"
        req["out"] = str(res_file)
        with contextlib.suppress(FileNotFoundError):
            res_file.unlink()
        pid = os.fork()
        if pid == 0:
            try:
                out.close()
                _child(framework, req)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        answer: dict[str, Any] = {"status": os.waitstatus_to_exitcode(status)}
        if res_file.is_file():
            answer.update(json.loads(res_file.read_text()))
        elif req["op"] == "resume":
            answer.update({"resumed": False, "error": f"process died (status {answer['status']})"})
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        raise SystemExit("usage: python -m tests.oracle.jobs serve FRAMEWORK")
