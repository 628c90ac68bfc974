"""A real FSDP2 + torch.distributed.checkpoint job on CPU (gloo), one process per rank, run by
tests/test_estimate_dcp_real.py (RANK / WORLD_SIZE / MASTER_* in the environment).

    python estimate_dcp_job.py save   DIR   fully_shard, one AdamW step, dcp.save
                                            {"model", "optim"} (get_state_dict) to DIR
    python estimate_dcp_job.py resume DIR   a fresh fully_shard model and AdamW, their state
                                            dicts (get_state_dict allocates the optimizer
                                            state), then dcp.load + set_state_dict measured;
                                            writes DIR.peak<rank>.json
The model is two 3072x3072 Linear layers (18.9M parameters, 76 MB fp32): each rank's saved
chunk of a weight or moment is 19 MB, large next to the ~2 MB the first load adds whatever the
size (library code pages, load plans, Python objects). The peak is the kernel's high-water
mark (VmHWM) after resetting it to the current RSS (/proc/self/clear_refs) just before
dcp.load: what the load adds to a job that already holds its sharded model and optimizer
state, as a resuming trainer does."""

import ctypes
import gc
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

mode, out = sys.argv[1], sys.argv[2]
WIDTH = 3072
dist.init_process_group("gloo", rank=int(os.environ["RANK"]),
                        world_size=int(os.environ["WORLD_SIZE"]))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(),
                            torch.nn.Linear(WIDTH, WIDTH))
fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(1))


def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


if mode == "save":
    model(x).pow(2).mean().backward()
    optim.step()
    optim.zero_grad()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(0)

msd, osd = get_state_dict(model, optim)
state = {"model": msd, "optim": osd}
# as in estimate_job.py: freed heap back to the kernel (the test fixes M_MMAP_THRESHOLD), then
# the high-water mark reset, so the RSS shows what the load allocates
gc.collect()
dist.barrier()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM := VmRSS
base = status("VmHWM")
dcp.load(state, checkpoint_id=out)
peak_load = status("VmHWM") - base
set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
peak = status("VmHWM") - base
rank = dist.get_rank()
got = optim.state[next(iter(model.parameters()))]["exp_avg"].to_local().abs().sum().item()
with open(f"{out}.peak{rank}.json", "w") as fh:
    json.dump({"peak": peak, "peak_dcp_load": peak_load, "exp_avg_abs": got}, fh)
dist.destroy_process_group()
