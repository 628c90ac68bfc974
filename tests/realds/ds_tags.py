"""A tiny real DeepSpeed ZeRO-2 job on CPU (gloo, world size 1) with two saves, run by
tests/test_gate.py.

    python ds_tags.py save DIR        train 2 steps, save global_step2; 1 more, save global_step3
    python ds_tags.py load DIR [TAG]  engine.load_checkpoint(DIR, tag=TAG); prints LOADED <step>
Exit 0 only when DeepSpeed really restored a checkpoint."""

import sys

import torch

mode, out = sys.argv[1], sys.argv[2]
tag = sys.argv[3] if len(sys.argv) > 3 else None

import deepspeed

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
       "bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
deepspeed.init_distributed(dist_backend="gloo")
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                       config=cfg)


def step() -> None:
    loss = engine(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum()
    engine.backward(loss)
    engine.step()


if mode == "save":
    step(), step()
    engine.save_checkpoint(out)
    step()
    engine.save_checkpoint(out)
else:
    path, _ = engine.load_checkpoint(out, tag=tag)
    if path is None:
        print("LOADED nothing")
        sys.exit(3)
    print("LOADED", engine.global_steps)
