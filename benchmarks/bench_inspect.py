"""inspect on a ~1.4 GB Llama-shaped bf16 checkpoint vs what a user would otherwise run.

Each contender runs in its own process; wall time and that process's peak RSS (from wait4's
rusage) are printed side by side from ONE run, with ratios against `import torch`.

    .venv/bin/python benchmarks/bench_inspect.py [--dir bench-out] [--layers 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def make_checkpoint(path: Path, layers: int) -> None:
    """Llama-shaped bf16 state dict (hidden 2048, vocab 32000, tied embedding) + numpy RNG state,
    the way a Trainer-style script might torch.save it."""
    code = f"""
import torch, numpy as np
h, v, inter = 2048, 32000, 5632
sd = {{}}
emb = torch.zeros(v, h, dtype=torch.bfloat16)
sd["model.embed_tokens.weight"] = emb
for i in range({layers}):
    p = f"model.layers.{{i}}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        sd[p + "self_attn." + n + ".weight"] = torch.zeros(h, h, dtype=torch.bfloat16)
    for n, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        sd[p + "mlp." + n + ".weight"] = torch.zeros(*shape, dtype=torch.bfloat16)
    sd[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
sd["lm_head.weight"] = emb
torch.save({{"model": sd, "numpy_rng": np.random.get_state()}}, {str(path)!r})
"""
    subprocess.run([PY, "-c", code], check=True)


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="bench-out")
    ap.add_argument("--layers", type=int, default=12)  # ~1.4 GB
    args = ap.parse_args()
    out = Path(args.dir)
    out.mkdir(exist_ok=True)
    ckpt = out / "llama_bf16.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt, args.layers)
    size = ckpt.stat().st_size
    contenders = {
        "ckptdoctor inspect --json": [PY, "-m", "ckptdoctor", "inspect", "--json", str(ckpt)],
        "python -c 'import torch'": [PY, "-c", "import torch"],
        "torch get_unsafe_globals_in_checkpoint": [
            PY, "-c", "import torch,sys; "
                      "torch.serialization.get_unsafe_globals_in_checkpoint(sys.argv[1])",
            str(ckpt)],
        "pickletools.genops over data.pkl (picklescan-style)": [
            PY, "-c", "import zipfile,pickletools,sys,io\nz=zipfile.ZipFile(sys.argv[1])\n"
            "n=[x for x in z.namelist() if x.endswith('data.pkl')][0]\n"
            "[op for op in pickletools.genops(io.BytesIO(z.read(n)))]", str(ckpt)],
        "torch.load(mmap=True) with the numpy allow-list": [
            PY, "-c", "import torch,sys,numpy as np\n"
            "g=[np._core.multiarray._reconstruct,np.ndarray,np.dtype,np.dtypes.UInt32DType]\n"
            "with torch.serialization.safe_globals(g): torch.load(sys.argv[1], mmap=True)",
            str(ckpt)],
    }
    try:
        import picklescan  # noqa: F401 - only whether it is installed

        contenders["picklescan"] = [PY, "-m", "picklescan", "--path", str(ckpt)]
    except ImportError:
        pass
    rows = {name: measure(cmd) for name, cmd in contenders.items()}
    base_t, base_m, _ = rows["python -c 'import torch'"]
    print(f"checkpoint: {ckpt} ({size / 1e9:.2f} GB), {os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}")
    print(f"{'contender':<52} {'wall s':>8} {'peak MiB':>9} {'t/import':>9} {'rss/import':>10} rc")
    for name, (t, m, rc) in rows.items():
        print(f"{name:<52} {t:8.3f} {m:9.1f} {t / base_t:9.2f} {m / base_m:10.2f} {rc}")
    t, m, _ = rows["ckptdoctor inspect --json"]
    print(f"\ninspect: {t / base_t:.2f}x the time of `import torch` (target < 0.5), "
          f"peak RSS {m:.0f} MiB (target < 100)")


if __name__ == "__main__":
    main()
