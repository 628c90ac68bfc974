"""A tiny real DeepSpeed ZeRO job on CPU (gloo), one process per rank, run by
tests/test_reshard_real.py (RANK / WORLD_SIZE / MASTER_* in the environment).

    python reshard_job.py save   STAGE DIR   train 3 steps (fp32, AdamW), save_checkpoint(DIR)
    python reshard_job.py resume STAGE DIR   load_checkpoint(DIR); write DIR.rank<r>.json with
                                             this rank's fp32 partition and Adam moments
                                             (unpadded; ZeRO-3: per parameter), the loss on a
                                             fixed batch, then one step on that batch and the
                                             loss after it
With RESHARD_SUB_GROUP=K, zero_optimization.sub_group_size = K (ZeRO-3 sub-groups).
With RESHARD_FROZEN=1 the first Linear is frozen (requires_grad=False).
With RESHARD_BF16=1, bf16 parameters (fp32 master weights, `bf16_zero_*` files).
With RESHARD_OPTIM=adafactor, torch.optim.Adafactor as a client optimizer (ZeRO-1/2: it sees
the flat 1-D partition, so its second moment is one `variance` per element).
RESHARD_IN / RESHARD_HIDDEN set the model's input and hidden width (default 5 and 7; the
memory test uses a wide model so that the files are large next to the interpreter).
Every rank sees the same batch at every step, so the data-parallel mean gradient is the same
for any world size and results are comparable bit for bit across world sizes."""

import json
import os
import sys

import torch

mode, stage, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import deepspeed
import torch.distributed as dist

IN, HIDDEN = int(os.environ.get("RESHARD_IN", 5)), int(os.environ.get("RESHARD_HIDDEN", 7))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(),
                            torch.nn.Linear(HIDDEN, 3))
cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
       "zero_optimization": {"stage": stage},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
ADAFACTOR = os.environ.get("RESHARD_OPTIM") == "adafactor"  # torch.optim.Adafactor, given
if ADAFACTOR:                                                 # to DeepSpeed as a client optimizer
    del cfg["optimizer"]
    cfg["zero_allow_untested_optimizer"] = True
if os.environ.get("RESHARD_SUB_GROUP"):
    cfg["zero_optimization"]["sub_group_size"] = int(os.environ["RESHARD_SUB_GROUP"])
BF16 = os.environ.get("RESHARD_BF16") == "1"  # bf16 params, fp32 master weights
if BF16:
    cfg["bf16"] = {"enabled": True}
deepspeed.init_distributed(dist_backend="gloo")
if os.environ.get("RESHARD_FROZEN") == "1":  # the first Linear frozen (ZeRO-3 saves it
    model[0].requires_grad_(False)           # per rank in frozen_param_fragments)
trained = [p for p in model.parameters() if p.requires_grad]
engine, _, _, _ = deepspeed.initialize(
    model=model, model_parameters=trained, config=cfg,
    optimizer=torch.optim.Adafactor(trained, lr=1e-2) if ADAFACTOR else None)
g = torch.Generator().manual_seed(1)
batches = [torch.randn(4, IN, generator=g) for _ in range(5)]
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
state = {"step": engine.global_steps, "groups": [], "params": {}}
if stage == 3:
    # ZeRO-3 partitions every parameter on its own: write this rank's slice of each one
    # (unpadded), by name, so that the slices of all ranks joined in rank order are the whole
    # parameter whatever the world size
    for i, flat in enumerate(opt.fp32_partitioned_groups_flat):
        st = opt.optimizer.state[flat]
        pos = 0
        for param in opt.fp16_groups[i]:
            pn = param.partition_numel()
            n = max(0, min(pn, param.ds_numel - rank * pn))
            state["params"][engine.param_names[param]] = {
                "fp32": flat.detach()[pos:pos + n].tolist(),
                "exp_avg": st["exp_avg"][pos:pos + n].tolist(),
                "exp_avg_sq": st["exp_avg_sq"][pos:pos + n].tolist(),
                "adam_step": float(st["step"]) if "step" in st else None}
            pos += pn
        assert pos == flat.numel(), (pos, flat.numel())
else:
    for i, flat in enumerate(opt.single_partition_of_fp32_groups):
        padding = opt.groups_padding[i]
        n = flat.numel() - padding
        st = opt.optimizer.state[flat]
        # every per-element moment (Adam: exp_avg, exp_avg_sq; Adafactor on the flat 1-D
        # partition: variance), by name
        moments = {k: v[:n].tolist() for k, v in sorted(st.items())
                   if torch.is_tensor(v) and v.dim() == 1 and v.numel() == flat.numel()}
        state["groups"].append({"fp32": flat.detach()[:n].tolist(), **moments,
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
