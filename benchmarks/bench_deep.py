"""`validate --deep` on a ~1.4 GB Llama-shaped bf16 checkpoint, as a torch zip and as sharded
safetensors, next to the floor: one read + CRC32 pass over the same bytes, and `sha256sum`.

Each contender runs in its own process; wall time and that process's peak RSS (from wait4's
rusage; the orchestrator never imports torch, so no inherited peak), warm page cache (every
file is read once before timing). The read passes and `--deep --jobs 1/2/N` run --repeat times
(default 5) in turn, A B C A B C ..., and the ratios are medians of same-round pairs, so a
shared machine's drift hits both sides; sha256sum, torchrun with 2 ranks and the manifest runs
run once.

    .venv/bin/python benchmarks/bench_deep.py [--dir bench-out] [--layers 12] [--repeat 5]
    .venv/bin/python benchmarks/bench_deep.py --size-gb 10   # one big torch zip: peak RSS

`--size-gb N` writes one N GB bf16 torch zip (torch.save of tensors mapped from scratch files
filled with random bf16, so the writer stays small too), runs read+CRC32 and `validate --deep`
on it once each, prints wall time and peak RSS, and deletes it (unless --keep).
The ckptdoctor sources are byte-compiled first (as an installed package is), so no contender
pays for compiling them.

Targets: --deep wall <= 1.4x the read+CRC32 pass (zlib.crc32, as the issue set it; the
zlib-ng pass is printed too, since --deep uses zlib-ng's CRC-32 when it is installed) and
>= 0.7x of read-only throughput; peak RSS <= 256 MiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
HAVE_NG = subprocess.run([PY, "-c", "import zlib_ng.zlib_ng"], capture_output=True).returncode == 0
ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ".ckptdoctor-manifest.json"
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
ENV.pop("PYTHONDONTWRITEBYTECODE", None)

BIG = """
import os, sys, torch
gb, zip_path = float(sys.argv[1]), sys.argv[2]
part = 256 << 20  # bytes per tensor
n = max(1, int(gb * 1e9) // part)
g = torch.Generator().manual_seed(0)
block = ((torch.randn(part // 2 // 16, generator=g) * 0.02).to(torch.bfloat16)
         .view(torch.uint8).numpy().tobytes())
srcs, sd = [], {}
for i in range(n):
    src = f"{zip_path}.src{i}"
    with open(src, "wb") as fh:  # random bf16 (no NaN/Inf), 16 copies of one random block
        for _ in range(16):
            fh.write(block)
    srcs.append(src)
    sd[f"model.layers.{i}.mlp.weight"] = torch.from_file(src, shared=True, size=part // 2,
                                                         dtype=torch.bfloat16)
torch.save(sd, zip_path)
for src in srcs:
    os.unlink(src)
"""

WRITE = """
import sys, torch
from safetensors.torch import save_file
layers, zip_path, st_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
h, v, inter = 2048, 32000, 5632
g = torch.Generator().manual_seed(0)
def w(*shape):  # random bf16 (no NaN/Inf): the checks must really look at every value
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
sd = {"model.embed_tokens.weight": w(v, h)}
for i in range(layers):
    p = f"model.layers.{i}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        sd[p + "self_attn." + n + ".weight"] = w(h, h)
    for n, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        sd[p + "mlp." + n + ".weight"] = w(*shape)
    sd[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
sd["lm_head.weight"] = w(v, h)
torch.save(sd, zip_path)
shards, cur, size = [], {}, 0
for k, t in sd.items():
    cur[k] = t
    size += t.numel() * t.element_size()
    if size >= 350_000_000:
        shards.append(cur); cur, size = {}, 0
if cur:
    shards.append(cur)
import os
os.makedirs(st_dir, exist_ok=True)
for i, s in enumerate(shards):
    save_file(s, f"{st_dir}/model-{i + 1:05d}-of-{len(shards):05d}.safetensors",
              metadata={"format": "pt"})
"""

READ_CRC = """
import sys, zlib, os
buf = bytearray(4 << 20); mv = memoryview(buf)
for p in sys.argv[1:]:
    crc = 0
    with open(p, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(mv[:n], crc)
"""
# the same pass with the CRC-32 `validate --deep` uses when zlib-ng is installed
READ_CRC_NG = READ_CRC.replace("import sys, zlib, os",
                               "import sys, os\nimport zlib_ng.zlib_ng as zlib")
READ_ONLY = """
import sys
buf = bytearray(4 << 20)
for p in sys.argv[1:]:
    with open(p, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
"""


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def torchrun_peak(cmd: list[str]) -> tuple[float, float, int]:
    """torchrun's workers are its children: RUSAGE_CHILDREN of a wrapper process gives the
    largest worker's peak (the wrapper itself is small)."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:], "
               "stdout=subprocess.DEVNULL)\n"
               "print(time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n")
    out = subprocess.run([PY, "-c", wrapper, *cmd], capture_output=True, text=True, env=ENV).stdout
    t, kb, rc = out.split()
    return float(t), int(kb) / 1024, int(rc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="bench-out")
    ap.add_argument("--layers", type=int, default=12)  # ~1.4 GB of bf16
    ap.add_argument("--size-gb", type=float, default=None, help="one big torch zip instead")
    ap.add_argument("--keep", action="store_true", help="keep the --size-gb file")
    ap.add_argument("--repeat", type=int, default=5, help="alternating runs per contender")
    ap.add_argument("--no-torchrun", action="store_true", help="skip the torchrun rows")
    args = ap.parse_args()
    out = Path(args.dir).resolve()
    out.mkdir(exist_ok=True)
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "ckptdoctor")], check=True,
                   stdout=subprocess.DEVNULL)
    if args.size_gb:
        big(out, args.size_gb, args.keep)
        return
    zpath, sdir = out / "llama_bf16.pt", out / "llama_bf16_st"
    if not zpath.exists() or not sdir.exists():
        subprocess.run([PY, "-c", WRITE, str(args.layers), str(zpath), str(sdir)], check=True)
    shards = sorted(str(p) for p in sdir.glob("*.safetensors"))
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    size = zpath.stat().st_size
    subprocess.run([PY, "-c", READ_CRC, str(zpath), *shards], check=True)  # warm the page cache
    deep = [PY, "-m", "ckptdoctor", "validate", "--deep"]
    (sdir / MANIFEST).unlink(missing_ok=True)  # a manifest would be verified (hashed) by --deep
    rows: dict[str, tuple[float, float, int]] = {}
    runs: dict[str, list[tuple[float, float, int]]] = {}
    targets = (("torch zip", zpath, [str(zpath)]), (f"safetensors x{len(shards)}", sdir, shards))
    jobs = sorted({1, 2, ncpu})
    plain: list[tuple[str, list[str]]] = []  # measured `repeat` times, all in turn (A B C A B C)
    for label, target, files in targets:
        plain.append((f"{label}: read only (4 MiB readinto)", [PY, "-c", READ_ONLY, *files]))
        plain.append((f"{label}: read + CRC32 (4 MiB readinto)", [PY, "-c", READ_CRC, *files]))
        if HAVE_NG:
            plain.append((f"{label}: read + CRC32 zlib-ng", [PY, "-c", READ_CRC_NG, *files]))
        plain += [(f"{label}: validate --deep --jobs {j}", [*deep, "--jobs", str(j), str(target)])
                  for j in jobs]
    for _ in range(args.repeat):
        for name, cmd in plain:
            runs.setdefault(name, []).append(measure(cmd))
    for name, got in runs.items():
        rows[name] = (statistics.median(t for t, _, _ in got), max(m for _, m, _ in got),
                      max(rc for _, _, rc in got))
    for label, target, files in targets:  # slow or stateful: once each
        rows[f"{label}: sha256sum"] = measure(["sha256sum", *files])
        if not args.no_torchrun:
            rows[f"{label}: torchrun 2 ranks validate --deep"] = torchrun_peak(
                [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "ckptdoctor", "validate", "--deep", str(target)])
        if target.is_dir():  # manifests are written for directories
            rows[f"{label}: validate --deep --write-manifest"] = measure(
                [*deep, "--write-manifest", str(target)])
            # a manifest present is verified by every later run: time that too, then drop it
            rows[f"{label}: validate --deep (verifies the manifest)"] = measure(
                [*deep, str(target)]
            )
            (target / MANIFEST).unlink()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch zip {size / 1e9:.2f} GB; {len(shards)} safetensors shards; {ncpu} CPUs; "
          f"python {sys.version.split()[0]}; warm page cache; load average {load:.1f}; "
          f"median of {args.repeat} alternating runs (sha256sum, torchrun, manifests: one run)")
    print(f"{'contender':<58} {'wall s':>8} {'peak MiB':>9} {'GB/s':>6} rc")
    for name, (t, m, rc) in rows.items():
        print(f"{name:<58} {t:8.2f} {m:9.1f} {size / t / 1e9:6.2f} {rc}")

    def ratio(a: str, b: str) -> float:
        """Median over rounds of a/b, each pair from the same round (robust to drift)."""
        if a not in runs or b not in runs:
            return float("nan")
        return statistics.median(x[0] / y[0] for x, y in zip(runs[a], runs[b], strict=True))

    for label, _, _ in targets:
        best = min(jobs, key=lambda j: rows[f"{label}: validate --deep --jobs {j}"][0])
        a = f"{label}: validate --deep --jobs {best}"
        worst_rss = max(m for k, (_, m, _) in rows.items()
                        if k.startswith(label) and "validate" in k)
        print(f"{label}: --deep (--jobs {best}) "
              f"{ratio(a, f'{label}: read + CRC32 (4 MiB readinto)'):.2f}x "
              f"read+CRC32 (target <= 1.4), {ratio(a, f'{label}: read + CRC32 zlib-ng'):.2f}x "
              f"read+CRC32 zlib-ng, {1 / ratio(a, f'{label}: read only (4 MiB readinto)'):.2f}x of "
              f"read-only throughput (target >= 0.7); peak RSS {worst_rss:.0f} MiB (target <= 256)")


def big(out: Path, gb: float, keep: bool) -> None:
    path = out / f"big_{gb:g}gb_bf16.pt"
    if not path.exists():
        subprocess.run([PY, "-c", BIG, str(gb), str(path)], check=True)
    size = path.stat().st_size
    subprocess.run([PY, "-c", READ_ONLY, str(path)], check=True)  # the page cache, as in main()
    try:
        rows = {"read only (4 MiB readinto)": measure([PY, "-c", READ_ONLY, str(path)]),
                "read + CRC32 (4 MiB readinto)": measure([PY, "-c", READ_CRC, str(path)]),
                "validate --deep": measure([PY, "-m", "ckptdoctor", "validate", "--deep",
                                            str(path)])}
    finally:
        if not keep:
            path.unlink()
    print(f"torch zip {size / 1e9:.2f} GB; python {sys.version.split()[0]}; one run each after "
          "one untimed read (the page cache may not hold it all: then each pass reads disk)")
    print(f"{'contender':<58} {'wall s':>8} {'peak MiB':>9} {'GB/s':>6} rc")
    for name, (t, m, rc) in rows.items():
        print(f"{name:<58} {t:8.2f} {m:9.1f} {size / t / 1e9:6.2f} {rc}")


if __name__ == "__main__":
    main()
