"""A Lingua-style checkpoint written by 2 real gloo ranks, run by tests/test_gate.py.

    python lingua_dcp2.py DIR [--no-dist]

Like lingua's CheckpointManager.save: torch.distributed.checkpoint.save of {"model", "optim"}
from every rank (FSDP2 shards the model over the 2 ranks), then each data-parallel rank writes
its own train_state_<dp_rank:05d>.json and rank 0 writes params.json. With --no-dist,
params.json has no `distributed` block (a config that does not record the data-parallel
size), so only the shards tell how many ranks saved."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp


def work(rank: int, out: str, port: int, no_dist: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(4, 8)).sum().backward()
        optim.step()
        optim.zero_grad()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    with open(os.path.join(out, f"train_state_{rank:05d}.json"), "w") as fh:
        json.dump({"step": 2, "acc_step": 0, "data_loader_state": {"rank": rank}}, fh)
    if rank == 0:
        params = {"name": "tiny", "steps": 2}
        if not no_dist:
            params["distributed"] = {"dp_shard": 2, "dp_replicate": 1, "tp_size": 1}
        with open(os.path.join(out, "params.json"), "w") as fh:
            json.dump(params, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(work, args=(out, port, "--no-dist" in sys.argv), nprocs=2)
