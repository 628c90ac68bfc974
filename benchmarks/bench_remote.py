"""`ckptdoctor inspect s3://...` vs downloading the object, on one S3 endpoint, in one run.

    .venv/bin/python benchmarks/bench_remote.py [--dir bench-out/remote] [--gb 1.4] [--repeat 3]

Starts moto's S3 server (`moto.server.ThreadedMotoServer`) on a random local port, writes a
--gb GB torch checkpoint with torch.save (a Llama-shaped bf16 state dict: many records, like a
real one), uploads it, then times, each --repeat times in a fresh process:

  inspect     python -m ckptdoctor inspect --json s3://bench/model.pt   (ranged reads)
  download    s3fs get of the same object to a local file              (what users do now)

and prints the medians, the ratio, and the requests / bytes ckptdoctor reported. The endpoint
is local, so "download" is the best case (no WAN): on a real bucket the ratio only grows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def make_checkpoint(path: Path, gb: float) -> None:
    code = f"""
import torch
hidden, inter, vocab = 2048, 5632, 32000
sd, total, i = {{"model.embed_tokens.weight":
                     torch.zeros(vocab, hidden, dtype=torch.bfloat16)}}, 0, 0
total = vocab * hidden * 2
while total < {gb} * 1e9:
    for name, shape in (("self_attn.q_proj", (hidden, hidden)),
                        ("self_attn.k_proj", (hidden, hidden)),
                        ("self_attn.v_proj", (hidden, hidden)),
                        ("self_attn.o_proj", (hidden, hidden)),
                        ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                        ("mlp.down_proj", (hidden, inter))):
        sd[f"model.layers.{{i}}.{{name}}.weight"] = torch.zeros(shape, dtype=torch.bfloat16)
        total += shape[0] * shape[1] * 2
    sd[f"model.layers.{{i}}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    i += 1
torch.save(sd, {str(path)!r})
"""
    subprocess.run([PY, "-c", code], check=True)


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="bench-out/remote")
    ap.add_argument("--gb", type=float, default=1.4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from remote_servers import MotoS3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    src = d / "model.pt"
    if not src.exists() or abs(src.stat().st_size - args.gb * 1e9) > 0.1e9:
        make_checkpoint(src, args.gb)
    size = src.stat().st_size
    server = MotoS3()
    try:
        env = {**os.environ, **server.env(),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        os.environ.update(server.env())
        server.client().create_bucket(Bucket="bench")
        t = time.perf_counter()
        server.upload_tree("bench", "model.pt", src)
        print(f"uploaded {size / 1e9:.2f} GB to {server.endpoint} in "
              f"{time.perf_counter() - t:.1f}s")
        url = "s3://bench/model.pt"
        fetch = (f"import s3fs; s3fs.S3FileSystem(skip_instance_cache=True)"
                 f".get({url!r}, {str(d / 'downloaded.pt')!r})")
        runs: dict[str, list[float]] = {"inspect": [], "download": []}
        report = {}
        for _ in range(args.repeat):
            el, out = timed([PY, "-m", "ckptdoctor", "inspect", "--json", url], env)
            runs["inspect"].append(el)
            report = json.loads(out)
            el, _ = timed([PY, "-c", fetch], env)
            runs["download"].append(el)
            assert (d / "downloaded.pt").stat().st_size == size
            (d / "downloaded.pt").unlink()
    finally:
        server.stop()
    ins, dl = statistics.median(runs["inspect"]), statistics.median(runs["download"])
    first = report["files"][0]
    print(f"object: {size / 1e9:.2f} GB torch zip, {first['tensor_summary']['count']} tensors, "
          f"{first['meta'].get('records')} zip records")
    print(f"{'contender':<12}{'median s':>10}   runs")
    for name, xs in runs.items():
        print(f"{name:<12}{statistics.median(xs):>10.2f}   " + ", ".join(f"{x:.2f}" for x in xs))
    print(f"inspect / download = {ins / dl:.3f}  (goal: < 0.25)")
    print(f"inspect read {report['bytes_read']} bytes ({report['bytes_read'] / size:.4%} of the "
          f"object) in {report['requests']} requests")


if __name__ == "__main__":
    main()
