"""A tiny real DeepSpeed ZeRO job on CPU (gloo), one process per rank, run by
tests/test_reshard_real.py (RANK / WORLD_SIZE / MASTER_* in the environment).

    python reshard_job.py save   STAGE DIR   train 3 steps (fp32, AdamW), save_checkpoint(DIR)
    python reshard_job.py resume STAGE DIR   load_checkpoint(DIR); write DIR.rank<r>.json with
                                             this rank's fp32 partition and Adam moments
                                             (unpadded), the loss on a fixed batch, then one
                                             step on that batch and the loss after it
With RESHARD_BF16=1, bf16 parameters (fp32 master weights, `bf16_zero_*` files).
Every rank sees the same batch at every step, so the data-parallel mean gradient is the same
for any world size and results are comparable bit for bit across world sizes."""

import json
import os
import sys

import torch

mode, stage, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import deepspeed
import torch.distributed as dist

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
       "zero_optimization": {"stage": stage},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
BF16 = os.environ.get("RESHARD_BF16") == "1"  # bf16 params, fp32 master weights
if BF16:
    cfg["bf16"] = {"enabled": True}
deepspeed.init_distributed(dist_backend="gloo")
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                       config=cfg)
g = torch.Generator().manual_seed(1)
batches = [torch.randn(4, 5, generator=g) for _ in range(5)]
if BF16:
    batches = [b.to(torch.bfloat16) for b in batches]


def loss_on(x):
    return engine(x).float().pow(2).mean()


if mode == "save":
    for x in batches[:3]:
        loss = loss_on(x)
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(out)
    sys.exit(0)

path, _ = engine.load_checkpoint(out)
assert path is not None, "DeepSpeed loaded nothing"
opt = engine.optimizer
rank = dist.get_rank()
state = {"step": engine.global_steps, "groups": []}
for i, flat in enumerate(opt.single_partition_of_fp32_groups):
    padding = opt.groups_padding[i]
    n = flat.numel() - padding
    st = opt.optimizer.state[flat]
    state["groups"].append({
        "fp32": flat.detach()[:n].tolist(),
        "exp_avg": st["exp_avg"][:n].tolist(), "exp_avg_sq": st["exp_avg_sq"][:n].tolist(),
        "adam_step": float(st["step"]) if "step" in st else None})
with torch.no_grad():
    state["loss"] = loss_on(batches[3]).item()
loss = loss_on(batches[3])
engine.backward(loss)
engine.step()
with torch.no_grad():
    state["loss_after_step"] = loss_on(batches[4]).item()
with open(f"{out}.rank{rank}.json", "w") as fh:
    json.dump(state, fh)
