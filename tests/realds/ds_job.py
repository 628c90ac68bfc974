"""A tiny real DeepSpeed job on CPU (gloo, world size 1), run by tests/test_deepspeed_real.py.

    python ds_job.py save  STAGE DIR   train 3 steps (bf16) and engine.save_checkpoint(DIR)
    python ds_job.py load  STAGE DIR   engine.load_checkpoint(DIR); print the weights' checksum
    python ds_job.py fp32  STAGE DIR   DeepSpeed's own zero_to_fp32 consolidation -> DIR.fp32.pt
With CKPTDOCTOR_SAFE_GLOBALS=<file>, that file (written by `ckptdoctor repair`) is run first.
With CKPTDOCTOR_DS_FROZEN=1 the first Linear is frozen (requires_grad=False: DeepSpeed saves it
in frozen_param_fragments, outside the optimizer's partitions) and `save` also writes the live
module's weights, as the engine holds them, to DIR.live.pt. Rank and world size come from the
usual RANK / WORLD_SIZE variables (the test starts one process per rank)."""

import os
import runpy
import sys

import torch

mode, stage, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.environ.get("CKPTDOCTOR_SAFE_GLOBALS"):
    runpy.run_path(os.environ["CKPTDOCTOR_SAFE_GLOBALS"])

import deepspeed

if mode == "fp32":
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(out)
    torch.save({k: v.contiguous() for k, v in sd.items()}, out + ".fp32.pt")
    sys.exit(0)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
frozen = os.environ.get("CKPTDOCTOR_DS_FROZEN") == "1"
if frozen:
    model[0].requires_grad_(False)
cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
       "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
deepspeed.init_distributed(dist_backend="gloo")
engine, _, _, _ = deepspeed.initialize(
    model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg)
if mode == "save":
    for _ in range(3):
        loss = engine(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(out)
    if frozen and int(os.environ.get("RANK", "0")) == 0:
        torch.save({k: v.detach().clone() for k, v in engine.module.state_dict().items()},
                   out + ".live.pt")
else:
    path, _ = engine.load_checkpoint(out)
    assert path is not None, "DeepSpeed loaded nothing"
    print("LOADED step", engine.global_steps)
