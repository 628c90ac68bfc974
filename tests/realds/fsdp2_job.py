"""An FSDP2 run on CPU/gloo ranks, saved and resumed with torch.distributed.checkpoint, for the
DCP reshard proofs (tests/test_reshard_dcp_real.py). Launched by tests/ranks.launch (RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment), one process per rank.

    python fsdp2_job.py save DIR          fully_shard on WORLD_SIZE ranks, 2 AdamW steps,
                                          dcp.save {"model", "optim"} (get_state_dict) to DIR;
                                          with FSDP2_PER_RANK=1 also {"dataloader":
                                          {"dp_rank_<r>": ...}}, one key per rank, as
                                          torchtitan's dataloader saves its state
    python fsdp2_job.py save_tp DIR       a DTensor sharded on dim 1 (Shard(1), as tensor
                                          parallelism shards a row-parallel weight), dcp.save
    python fsdp2_job.py resume DIR        a fresh model and optimizer, fully_shard on
                                          WORLD_SIZE ranks, dcp.load DIR, set_state_dict; rank
                                          0 writes DIR.resume<W>.json: the full weights and
                                          optimizer state (gathered), the loss on a fixed batch
                                          and the loss after one more step on it. Every rank
                                          writes DIR.plan<W>.rank<R>.json: what its dcp.load
                                          read (DCP's own load plan for this rank)
FSDP2_IN / FSDP2_HIDDEN set the model's input and hidden width (default 6 and 10) and
FSDP2_DEPTH adds that many hidden Linear + Tanh layers (default 0; the memory test uses a
deep, wide model: many tensors). Every rank sees the same batch, so the data-parallel mean
gradient does not depend on the world size: the same run on any number of ranks takes the
same steps."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

IN, HIDDEN = int(os.environ.get("FSDP2_IN", 6)), int(os.environ.get("FSDP2_HIDDEN", 10))
DEPTH = int(os.environ.get("FSDP2_DEPTH", 0))
g = torch.Generator().manual_seed(1)
BATCHES = [torch.randn(4, IN, generator=g) for _ in range(4)]


def build(world):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh()]
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(HIDDEN, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def loss_on(model, x):
    return model(x).pow(2).mean()


def step(model, optim, x):
    loss_on(model, x).backward()
    optim.step()
    optim.zero_grad()


def flat(v):
    if isinstance(v, torch.Tensor):
        return v.reshape(-1).tolist() if v.dim() else float(v)
    return v


def load_plan(state, ckpt, rank):
    """DCP's load plan for this rank's state dict: per read, the file it reads, whether it reads
    a whole stored item (offset 0, its full length) and how many bytes."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

    md = FileSystemReader(ckpt).read_metadata()
    planner = DefaultLoadPlanner()
    planner.set_up_planner(state, md, rank == 0)
    reads = []
    for item in planner.create_local_plan().items:
        if item.type.name == "BYTE_IO":
            continue
        stored = next(c for c in md.state_dict_metadata[item.storage_index.fqn].chunks
                      if tuple(c.offsets) == tuple(item.storage_index.offset))
        reads.append({"fqn": item.storage_index.fqn,
                      "file": md.storage_data[item.storage_index].relative_path,
                      "whole": not any(item.storage_offsets)
                      and tuple(item.lengths) == tuple(stored.sizes)})
    return reads


def main():
    mode, ckpt = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, optim = build(world)
    if mode == "save_tp":
        from torch.distributed.tensor import Shard, distribute_tensor

        w = torch.arange(24.0).reshape(4, 6)
        dcp.save({"w": distribute_tensor(w, init_device_mesh("cpu", (world,)), [Shard(1)])},
                 checkpoint_id=ckpt)
    elif mode == "save":
        for x in BATCHES[:2]:
            step(model, optim, x)
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd}
        if os.environ.get("FSDP2_PER_RANK") == "1":
            state["dataloader"] = {f"dp_rank_{rank}": {"position": 8 * rank}}
        dcp.save(state, checkpoint_id=ckpt)
    else:
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd}
        with open(f"{ckpt}.plan{world}.rank{rank}.json", "w") as fh:
            json.dump(load_plan(state, ckpt, rank), fh)
        dcp.load(state, checkpoint_id=ckpt)
        set_state_dict(model, optim, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        fmsd, fosd = get_state_dict(model, optim, options=full)
        rec = {"weights": {k: flat(v) for k, v in fmsd.items()},
               "optim": {f"{k}.{m}": flat(v[m]) for k, v in fosd.get("state", {}).items()
                         for m in sorted(v)}}
        with torch.no_grad():
            rec["loss"] = loss_on(model, BATCHES[2]).item()
        step(model, optim, BATCHES[2])
        with torch.no_grad():
            rec["loss_after_step"] = loss_on(model, BATCHES[3]).item()
        if rank == 0:  # with cpu_offload only rank 0 receives the gathered values
            with open(f"{ckpt}.resume{world}.json", "w") as fh:
                json.dump(rec, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
