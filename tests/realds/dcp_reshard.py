"""DCP reshards on load, shown with real torch: an FSDP2 model + AdamW trained on 2 gloo ranks
and saved with torch.distributed.checkpoint, then loaded by 1 plain (unsharded) process.
Run by tests/test_reshard_real.py.

    python dcp_reshard.py save DIR   2 ranks (mp.spawn): fully_shard, 2 AdamW steps, dcp.save
                                      {"model", "optim"} to DIR; rank 0 writes DIR.ref.json
                                      with the full weights and Adam moments (gathered by
                                      get_state_dict(full_state_dict=True)), the loss on a
                                      fixed batch, and the loss after one more step on it
    python dcp_reshard.py load DIR   1 process, no process group: a fresh model and AdamW,
                                      dcp.load into their state dicts, set_state_dict; writes
                                      DIR.got.json with the same fields
Every rank sees the same batch, so the data-parallel mean gradient does not depend on the
world size."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))
    return model


g = torch.Generator().manual_seed(1)
BATCHES = [torch.randn(4, 6, generator=g) for _ in range(4)]


def loss_on(model, x):
    return model(x).pow(2).mean()


def record(model, optim, out):
    msd, osd = get_state_dict(model, optim, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    rec = {"weights": {k: v.reshape(-1).tolist() for k, v in msd.items()},
           "optim": {f"{k}.{m}": (v[m].reshape(-1).tolist() if v[m].dim() else float(v[m]))
                     for k, v in osd.get("state", {}).items() for m in sorted(v)}}
    # (with cpu_offload only rank 0 receives the gathered values; it is the one that writes)
    with torch.no_grad():
        rec["loss"] = loss_on(model, BATCHES[2]).item()
    loss_on(model, BATCHES[2]).backward()
    optim.step()
    optim.zero_grad()
    with torch.no_grad():
        rec["loss_after_step"] = loss_on(model, BATCHES[3]).item()
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(rec, fh)


def save_rank(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = make()
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x in BATCHES[:2]:
        loss_on(model, x).backward()
        optim.step()
        optim.zero_grad()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    dist.barrier()
    record(model, optim, out + ".ref.json")
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "save":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(save_rank, args=(out, port), nprocs=2)
    else:
        model = make()
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=out)
        set_state_dict(model, optim, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        record(model, optim, out + ".got.json")
