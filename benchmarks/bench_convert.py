"""`ckptdoctor convert` vs the usual way, on a ~1.4 GB Llama-shaped bf16 state dict.

    .venv/bin/python benchmarks/bench_convert.py [--dir bench-out/convert] [--layers 16]
        [--repeat 3]

Writes the checkpoint (16 layers, hidden 2048, intermediate 4096, vocab 32000, tied
embedding: lm_head.weight shares model.embed_tokens.weight's storage) to --dir, then runs
each contender in its own process, --repeat times (default 3), and prints the median wall time
and the largest peak RSS (from wait4's rusage) of its runs, in one table from ONE invocation,
with ratios against the usual way:

  torch -> safetensors   ckptdoctor convert --to safetensors   vs  torch.load + clone the tied
                                                                   tensor + safetensors save_file
  torch -> DCP           ckptdoctor convert --to dcp           vs  format_utils.torch_save_to_dcp
  DCP -> torch           ckptdoctor convert --to torch         vs  format_utils.dcp_to_torch_save

ckptdoctor runs the real CLI (`python -m ckptdoctor convert`), verification on (it re-reads
the output and compares every byte with the source), fsync on. The usual ways do not verify;
only torch_save_to_dcp fsyncs (DCP's default). Before every run, earlier runs' dirty pages are
flushed (os.sync) and the input is read once, so each run starts from a warm page cache and an
idle disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def make_checkpoint(path: Path, layers: int) -> None:
    code = f"""
import torch
torch.manual_seed(0)
h, v, inter = 2048, 32000, 4096
bf = torch.bfloat16
sd = {{}}
emb = torch.randn(v, h, dtype=bf)
sd["model.embed_tokens.weight"] = emb
for i in range({layers}):
    p = f"model.layers.{{i}}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        sd[p + "self_attn." + n + ".weight"] = torch.randn(h, h, dtype=bf)
    for n, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        sd[p + "mlp." + n + ".weight"] = torch.randn(*shape, dtype=bf)
    sd[p + "input_layernorm.weight"] = torch.ones(h, dtype=bf)
    sd[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=bf)
sd["model.norm.weight"] = torch.ones(h, dtype=bf)
sd["lm_head.weight"] = emb
torch.save(sd, {str(path)!r})
"""
    subprocess.run([PY, "-c", code], check=True)


def warm(path: Path) -> None:
    """Flush earlier runs' dirty pages (so no run pays for the previous one's writeback),
    then read the input once (so every run starts from a warm page cache)."""
    os.sync()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


def measure(cmd: list[str], repeat: int = 1, before=None) -> tuple[float, float]:
    """(median seconds, max peak RSS MiB) over `repeat` runs of a child process; `before()`
    runs ahead of each (not timed)."""
    runs = []
    for _ in range(repeat):
        if before is not None:
            before()
        runs.append(_measure_once(cmd))
    times = sorted(t for t, _ in runs)
    return times[len(times) // 2], max(r for _, r in runs)


def _measure_once(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def ckptdoctor(src: Path, dst: Path, to: str) -> list[str]:
    return [PY, "-m", "ckptdoctor", "convert", str(src), str(dst), "--to", to]


def py(code: str) -> list[str]:
    return [PY, "-c", "import warnings; warnings.filterwarnings('ignore')\n" + code]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="bench-out/convert")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per contender; the table shows the median time, the max RSS")
    args = ap.parse_args()
    n = args.repeat
    out = Path(args.dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = out / "pytorch_model.bin"
    make_checkpoint(src, args.layers)
    size = src.stat().st_size
    usual_dcp = out / "usual_dcp"

    rows = []
    _, base_rss = measure(py("import torch, safetensors.torch, ckptdoctor.convert"))
    _, base_cli_rss = measure([PY, "-m", "ckptdoctor", "--help"])

    def fresh(*paths: Path, warm_path: Path = src):
        def run() -> None:
            for p in paths:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            warm(warm_path)
        return run

    ours = measure(ckptdoctor(src, out / "ours_st", "safetensors"), n, fresh(out / "ours_st"))
    usual = measure(py(f"""
import torch
from safetensors.torch import save_file
sd = torch.load({str(src)!r}, weights_only=True)
sd["lm_head.weight"] = sd["lm_head.weight"].clone()  # save_file refuses shared tensors
save_file(sd, {str(out / "usual.safetensors")!r}, metadata={{"format": "pt"}})
"""), n, fresh(out / "usual.safetensors"))
    rows.append(("torch -> safetensors", ours, usual, "torch.load + save_file"))

    ours = measure(ckptdoctor(src, out / "ours_dcp", "dcp"), n, fresh(out / "ours_dcp"))
    usual = measure(py(f"""
from torch.distributed.checkpoint.format_utils import torch_save_to_dcp
torch_save_to_dcp({str(src)!r}, {str(usual_dcp)!r})
"""), n, fresh(usual_dcp))
    rows.append(("torch -> DCP", ours, usual, "torch_save_to_dcp"))

    back, usual_back = out / "ours_back.pt", out / "usual_back.pt"
    ours = measure(ckptdoctor(usual_dcp, back, "torch"), n, fresh(back, warm_path=usual_dcp))
    usual = measure(py(f"""
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
dcp_to_torch_save({str(usual_dcp)!r}, {str(usual_back)!r})
"""), n, fresh(usual_back, warm_path=usual_dcp))
    rows.append(("DCP -> torch", ours, usual, "dcp_to_torch_save"))

    print(f"checkpoint: {size / 1e9:.2f} GB, {args.layers} layers, bf16, tied embedding "
          f"({os.cpu_count()} CPUs, torch {_torch_version()}, {time.strftime('%Y-%m-%d')}); "
          f"{n} run(s) each: median wall time, max peak RSS")
    print(f"process baseline: `import torch, safetensors, ckptdoctor.convert` {base_rss:.0f} MiB; "
          f"`ckptdoctor --help` {base_cli_rss:.0f} MiB")
    print()
    print("| conversion | tool | wall s | peak RSS MiB | RSS vs usual | time vs usual |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, (ot, orss), (ut, urss), usual_name in rows:
        print(f"| {name} | ckptdoctor convert (verified, fsync) | {ot:.2f} | {orss:.0f} | "
              f"{orss / urss:.2f}x | {ot / ut:.2f}x |")
        print(f"| {name} | {usual_name} | {ut:.2f} | {urss:.0f} | 1.00x | 1.00x |")


def _torch_version() -> str:
    out = subprocess.run([PY, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    main()
