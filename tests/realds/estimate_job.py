"""A real DeepSpeed ZeRO-1/2/3 job on CPU (gloo), one process per rank, run by
tests/test_estimate_zero_real.py (RANK / WORLD_SIZE / MASTER_* in the environment).

    python estimate_job.py save   STAGE DIR   one step (fp32, AdamW), save_checkpoint(DIR)
    python estimate_job.py resume STAGE DIR   initialize, then load_checkpoint(DIR) and write
                                              DIR.peak<rank>.json: the peak RSS the load added
The model is two 1536x1536 Linear layers (4.7M parameters, 19 MB fp32), big enough that the
load's allocations dominate allocator noise. The peak is the kernel's high-water mark
(VmHWM, what ru_maxrss reports) after resetting it to the current RSS (/proc/self/clear_refs)
just before load_checkpoint, so what initialize allocated earlier does not hide it."""

import ctypes
import gc
import json
import resource
import sys

import torch

mode, stage, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import deepspeed
import torch.distributed as dist

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1536, 1536), torch.nn.Tanh(),
                            torch.nn.Linear(1536, 1536))
cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
       "zero_optimization": {"stage": stage},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
deepspeed.init_distributed(dist_backend="gloo")
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                       config=cfg)
x = torch.randn(2, 1536, generator=torch.Generator().manual_seed(1))


def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


if mode == "save":
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(out)
    sys.exit(0)

# resume: a fresh engine, as a resuming job has it, then the load measured alone. Freed heap
# memory goes back to the kernel first (malloc_trim; the test runs this job with a fixed
# M_MMAP_THRESHOLD so big tensors are mmapped and unmapped on free), else the load reuses pages
# initialize freed and the RSS does not show it.
gc.collect()
dist.barrier()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM := VmRSS
base = status("VmHWM")
maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
path, _ = engine.load_checkpoint(out)
assert path is not None, "DeepSpeed loaded nothing"
peak = status("VmHWM") - base
rank = dist.get_rank()
with open(f"{out}.peak{rank}.json", "w") as fh:
    json.dump({"peak": peak, "ru_maxrss_growth": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024 - maxrss_before}, fh)
