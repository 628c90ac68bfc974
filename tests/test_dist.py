"""`validate --deep` under torchrun: files split over ranks, findings gathered to rank 0 over
gloo, one report, the same exit code on every rank. Real torchrun (torch.distributed.run) and
real gloo process groups on CPU; the DCP checkpoint is written by two real gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptdoctor.dist import assign, writer_rank
from ckptdoctor.model import FileInfo
from tests.ranks import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def single(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    return subprocess.run([sys.executable, "-m", "ckptdoctor", *map(str, args)],
                          capture_output=True, text=True, env=env)


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "ckptdoctor", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_assign_sends_per_rank_files_to_their_rank_and_balances_the_rest():
    files = [FileInfo("__0_0.distcp", "dcp-shard", 10), FileInfo("__1_0.distcp", "dcp-shard", 10),
             FileInfo("global_step5/bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt",
                      "torch-zip", 5),
             FileInfo("global_step5/mp_rank_00_model_states.pt", "torch-zip", 7),
             FileInfo("a.safetensors", "safetensors", 100),
             FileInfo("b.safetensors", "safetensors", 60),
             FileInfo("c.safetensors", "safetensors", 50), FileInfo("config.json", "json", 1)]
    assert [writer_rank(f.path) for f in files[:4]] == [0, 1, 3, 0]
    split = assign(files, 2)
    names = [[f.path for f in r] for r in split]
    assert sorted(sum(names, [])) == sorted(f.path for f in files)  # each file exactly once
    assert "__0_0.distcp" in names[0] and "__1_0.distcp" in names[1]
    assert files[2].path in names[1]  # writer rank 3 on a 2-rank job: 3 % 2
    assert abs(sum(f.size for f in split[0]) - sum(f.size for f in split[1])) <= 100


@pytest.fixture()
def damaged_dir(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for i in range(4):
        t = torch.randn(128, 64)
        if i == 1:
            t[5, 7] = float("nan")
        save_file({f"layers.{i}.w": t}, d / f"model-{i + 1:05d}-of-00004.safetensors",
                  metadata={"format": "pt"})
    torch.save({"x": torch.arange(8192, dtype=torch.float32)}, d / "extra.pt")
    data = bytearray((d / "extra.pt").read_bytes())
    data[data.find(torch.arange(8192, dtype=torch.float32).numpy().tobytes()[4000:4016])] ^= 4
    (d / "extra.pt").write_bytes(bytes(data))
    from ckptdoctor.inspect import inspect_path

    split = [{f.path for f in r} for r in assign(inspect_path(d).files, 2)]
    assert "extra.pt" in split[0] and "model-00002-of-00004.safetensors" in split[1]  # both
    return d  # ranks find something: the report needs the gather


def test_torchrun_two_ranks_print_the_single_process_report(damaged_dir):
    one = single("validate", "--deep", "--format", "json", damaged_dir)
    two = torchrun("validate", "--deep", "--format", "json", damaged_dir)
    assert one.returncode == 1 and two.returncode != 0, two.stderr[-2000:]
    assert json.loads(two.stdout) == json.loads(one.stdout)  # one document: rank 0's only
    found = {(f["code"], f["path"]) for f in json.loads(one.stdout)["findings"]}
    assert ("CK204", "extra.pt") in found and ("CK501", "model-00002-of-00004.safetensors") in found


def test_every_rank_exits_with_the_same_code_and_only_rank_0_prints(damaged_dir):
    """The environment torchrun gives each worker, set by hand so each rank's exit code and
    stdout can be read separately."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(ENV, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ckptdoctor", "validate", "--deep", str(damaged_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "CK204" in outs[0][0] and "CK501" in outs[0][0]
    assert outs[1][0] == ""


# --- a DCP checkpoint written by two real gloo ranks ------------------------------------------
def _dcp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    full = {"embed": torch.randn(16, 8), "proj": torch.randn(8, 8)}
    state = {"model": {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()},
             "step": 7}
    dcp.save(state, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_dcp_checkpoint_manifest_under_torchrun(tmp_path):
    out = tmp_path / "dcp"
    torch.multiprocessing.spawn(_dcp_rank, args=(2, free_port(), str(out)), nprocs=2)
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    base = single("validate", "--deep", "--format", "json", out)
    two = torchrun("validate", "--deep", "--write-manifest", "--format", "json", out)
    assert two.returncode == base.returncode == 0, (two.stdout, two.stderr[-2000:])
    assert json.loads(two.stdout)["findings"] == json.loads(base.stdout)["findings"]
    # the manifest rank 0 wrote holds rank 1's hashes too: a single process verifies it ...
    doc = json.loads((out / ".ckptdoctor-manifest.json").read_text())
    import hashlib

    assert {r["name"]: r["digest"] for r in doc["predicate"]["resources"]} == {
        n: hashlib.sha256((out / n).read_bytes()).hexdigest()
        for n in (".metadata", "__0_0.distcp", "__1_0.distcp")}
    assert single("validate", out).returncode == 0
    # ... and so do two ranks, after rank 1's shard changed
    data = bytearray((out / "__1_0.distcp").read_bytes())
    data[-1] ^= 1
    (out / "__1_0.distcp").write_bytes(bytes(data))
    two = torchrun("validate", "--format", "json", out)
    assert two.returncode != 0
    assert [f["path"] for f in json.loads(two.stdout)["findings"] if f["code"] == "CK503"] == \
        ["__1_0.distcp"]


def test_inspect_and_latest_under_torchrun_print_once(damaged_dir, tmp_path):
    one = single("inspect", "--json", damaged_dir)
    two = torchrun("inspect", "--json", damaged_dir)
    assert two.returncode == one.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout) == json.loads(one.stdout)
    from tests.fixtures import factory as fx

    run = fx.make_hf_trainer_run(tmp_path / "run", steps=4, save_steps=2)  # checkpoint-2, -4
    one = single("latest", run)
    two = torchrun("latest", run)
    assert two.returncode == one.returncode and two.stdout == one.stdout
    assert one.returncode == 0 and two.stdout.strip() == str(run / "checkpoint-4")
