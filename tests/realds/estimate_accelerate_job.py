"""A real Accelerate job on CPU, single process, run by tests/test_estimate_accelerate_real.py.

    python estimate_accelerate_job.py save   DIR   Accelerator.prepare, one AdamW step,
                                                   Accelerator.save_state(DIR)
    python estimate_accelerate_job.py resume DIR   a fresh model and AdamW through
                                                   Accelerator.prepare, then
                                                   accelerator.load_state(DIR) measured;
                                                   writes DIR.peak.json
The model is two 1536x1536 Linear layers (4.7M parameters, 18.9 MB fp32). The peak is the
kernel's high-water mark (VmHWM) after resetting it to the current RSS (/proc/self/clear_refs)
just before load_state: what the load adds to a job that already holds its model and a fresh
(stateless) optimizer, as a resuming training script does."""

import ctypes
import gc
import json
import sys

import torch
from accelerate import Accelerator

mode, out = sys.argv[1], sys.argv[2]
WIDTH = 1536
torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(),
                            torch.nn.Linear(WIDTH, WIDTH))
optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, optim = accelerator.prepare(model, optim)


def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


if mode == "save":
    x = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(1))
    accelerator.backward(model(x).pow(2).mean())
    optim.step()
    optim.zero_grad()
    accelerator.save_state(out)
    sys.exit(0)

# as in estimate_job.py: freed heap back to the kernel (the test fixes M_MMAP_THRESHOLD), then
# the high-water mark reset, so the RSS shows what the load allocates
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM := VmRSS
base = status("VmHWM")
accelerator.load_state(out)
peak = status("VmHWM") - base
after = status("VmRSS") - base  # what stays: the optimizer state, now the optimizer's own
inner = getattr(optim, "optimizer", optim)
got = sum(s["exp_avg"].abs().sum().item() for s in inner.state.values())
with open(f"{out}.peak.json", "w") as fh:
    json.dump({"peak": peak, "after": after, "exp_avg_abs": got}, fh)
