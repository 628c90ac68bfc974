"""Resume-memory estimate, from metadata only (never imports torch).

What resuming a checkpoint needs: bytes of weights, gradients (same dtype as the weights
unless the checkpoint records otherwise) and optimizer state; per rank under the recorded
ZeRO stage / FSDP sharding and world size; and the CPU RAM of the framework's own load path:

  hf-trainer   the model file(s) loaded into the model and released, then `optimizer.pt`
               torch.load'ed whole on every rank and kept as the optimizer's state (peak:
               the larger)
  deepspeed    each rank loads its *_model_states.pt, releases it, then loads its own
               *_optim_states.pt (peak: the larger); ZeRO-3's model states hold only empty
               placeholders, so its peak is the optim file; the consolidation (zero_to_fp32)
               loads every optim file and builds the full fp32 model
  accelerate   load_state: each model file loaded into its model and released, then the
               optimizer[_i].bin files torch.load'ed and kept as the optimizers' state (peak:
               the larger)
  lightning    torch.load of the whole .ckpt on every rank
  dcp          dcp.load reads into the job's own (pre-allocated, sharded) state dict, one
               saved chunk at a time: the two largest chunks (.metadata's chunk sizes)
  fsdp         (sharded files without DCP metadata) each rank reads its share of the shards
  anything else  the whole file(s)

Numbers come from inspect's per-tensor metadata (safetensors headers, pickle rebuild calls),
so they are the bytes the loaders allocate; Python / allocator overheads are not included."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .codes import Code
from .model import Finding, Report, TensorInfo
from .pickles.tables import DTYPE_SIZES

_OPTIM_FILE = re.compile(r"(^|/)(optimizer[^/]*\.(pt|bin)|[^/]*_optim_states\.pt)$")
_OPTIM_DIR = re.compile(r"(^|/)optimizer(_\d+)?/")
_WEIGHT_FILE = re.compile(r"(^|/)(model[^/]*\.safetensors|pytorch_model[^/]*\.bin|"
                          r"adapter_model\.(safetensors|bin)|[^/]*_model_states\.pt|"
                          r"consolidated[^/]*\.pth|model\.pth?|pytorch_model_fsdp[^/]*)$")
_SKIP_FILE = re.compile(r"(^|/)(rng_state[^/]*|random_states_\d+\.pkl|scheduler[^/]*|"
                        r"scaler\.pt|training_args\.bin)$")
_OPTIM_KEYS = ("optimizer", "optimizer_states", "optimizer_state_dict", "optim", "optimizers",
               "optimizer_state", "base_optimizer_state", "fp32_flat_groups",
               "single_partition_of_fp32_groups")
_WEIGHT_KEYS = ("state_dict", "model", "module", "model_state_dict", "model_state", "weights")
_ADAM_BYTES_PER_PARAM = 8  # fp32 exp_avg + exp_avg_sq


@dataclass
class MemoryEstimate:
    params: int = 0
    weights_bytes: int = 0
    grads_bytes: int = 0
    optimizer_bytes: int = 0
    optimizer_recorded: bool = True  # False: assumed AdamW (2 fp32 moments per parameter)
    world_size: int = 1
    sharding: str = "none"  # none, zero-1, zero-2, zero-3, fsdp
    gpu_per_rank: int = 0
    cpu_ram_per_rank: int = 0
    cpu_ram_steps: list[tuple[str, int]] = field(default_factory=list)
    consolidation_ram: int | None = None  # ZeRO -> fp32 (zero_to_fp32 / convert)
    findings: list[Finding] = field(default_factory=list)
    checkpoint: str = ""  # the checkpoint estimated (the newest one of a run directory)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint, "params": self.params,
            "weights_bytes": self.weights_bytes,
            "grads_bytes": self.grads_bytes, "optimizer_bytes": self.optimizer_bytes,
            "optimizer_recorded": self.optimizer_recorded, "world_size": self.world_size,
            "sharding": self.sharding, "gpu_per_rank": self.gpu_per_rank,
            "cpu_ram_per_rank": self.cpu_ram_per_rank,
            "cpu_ram_steps": [{"step": s, "bytes": n} for s, n in self.cpu_ram_steps],
            "consolidation_ram": self.consolidation_ram,
            "findings": [f.to_json() for f in self.findings],
        }


def _role(path: str, t: TensorInfo) -> str:
    """weights, optimizer or other for one tensor of one file."""
    if _SKIP_FILE.search(path):
        return "other"
    head = t.name.split(".", 1)[0]
    if _OPTIM_FILE.search(path) or _OPTIM_DIR.search(path + "/" if path else path):
        return "optimizer"
    if head in _OPTIM_KEYS:
        return "optimizer"
    if head in _WEIGHT_KEYS or _WEIGHT_FILE.search(path):
        return "weights"
    if head in ("lr_schedulers", "lr_scheduler", "loops", "callbacks", "rng", "rng_state"):
        return "other"
    return "weights"


def _newest_checkpoint(report: Report) -> Report:
    """A run directory holds several checkpoints; a resume loads one: the newest (highest
    step, as `ckptdoctor latest` and the Trainer pick it). Its files, its layout."""
    kids = [c for c in report.checkpoints if c.path]
    if not kids:
        return report
    best = max(kids, key=lambda c: (c.step if isinstance(c.step, int) else -1, c.path))
    prefix = best.path.rstrip("/") + "/"
    files = [replace(f, path=f.path[len(prefix):]) for f in report.files
             if f.path.startswith(prefix)]
    return Report(f"{report.path.rstrip('/')}/{best.path}", best, files=files)


def _details(report: Report) -> dict[str, Any]:
    d = dict(report.layout.details)
    for nested in ("deepspeed", "fsdp"):
        if isinstance(d.get(nested), dict):
            for k, v in d[nested].items():
                d.setdefault(k, v)
    return d


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def estimate(report: Report, ram: int | None = None, gpu_mem: int | None = None,
             local_ram: int | None = None) -> MemoryEstimate:
    """The estimate for an inspect Report. `ram` / `gpu_mem` (bytes) are what the resuming
    machine has per rank; without `ram` the local machine's available memory is used."""
    est = MemoryEstimate()
    report = _newest_checkpoint(report)
    est.checkpoint = report.path
    layout = report.layout.name
    details = _details(report)
    files_by_role: dict[str, int] = {}
    optim_files: dict[str, int] = {}
    weight_dtypes: set[str] = set()
    fp32_partitions = 0  # ZeRO-3: elements of every rank's fp32_flat_groups
    for f in report.files:
        for t in f.tensors:
            role = _role(f.path, t)
            if role == "weights":
                est.params += t.numel
                est.weights_bytes += t.nbytes
                weight_dtypes.add(t.dtype)
            elif role == "optimizer":
                est.optimizer_bytes += t.nbytes
                optim_files[f.path] = optim_files.get(f.path, 0) + t.nbytes
                if ".fp32_flat_groups." in f".{t.name}.":
                    fp32_partitions += t.numel
            files_by_role[f.path] = files_by_role.get(f.path, 0) + t.nbytes
    # the bytes the weights' own files hold (DeepSpeed's *_model_states.pt `module`)
    loaded_weights = est.weights_bytes
    if details.get("zero_stage") == 3 and fp32_partitions:
        # ZeRO-3 saves the module's parameters as empty placeholders (numel 0, the model's
        # dtype; frozen parameters as per-rank frozen_param_fragments, counted above): the
        # trainable weights are the fp32 partitions in the optim files, one per rank, each
        # parameter padded to a multiple of the world size (a few elements at most)
        est.params += fp32_partitions
        size = max((DTYPE_SIZES.get(d, 4) for d in weight_dtypes), default=4)
        est.weights_bytes += fp32_partitions * size
    # DeepSpeed: `module` in *_model_states.pt holds the (bf16/fp16) weights; the fp32 master
    # copy and the moments live in the *_optim_states.pt files (counted as optimizer)
    est.grads_bytes = est.weights_bytes
    if not optim_files:
        est.optimizer_recorded = False
        est.optimizer_bytes = est.params * _ADAM_BYTES_PER_PARAM
        est.findings.append(Code.EST_PARTIAL.finding(
            "", "no optimizer state recorded: assumed AdamW (two fp32 moments per parameter)"))
    ws = _int(details.get("world_size")) or _int(details.get("dp_world_size")) or 1
    est.world_size = ws
    stage = details.get("zero_stage")
    if isinstance(stage, int) and stage > 0:
        est.sharding = f"zero-{stage}"
    elif layout in ("dcp", "llama-recipes", "torchtitan") or details.get("fsdp"):
        est.sharding = "fsdp" if ws > 1 else "none"
    w, g, o = est.weights_bytes, est.grads_bytes, est.optimizer_bytes
    if est.sharding == "zero-1":
        est.gpu_per_rank = w + g + o // ws
    elif est.sharding == "zero-2":
        est.gpu_per_rank = w + (g + o) // ws
    elif est.sharding in ("zero-3", "fsdp"):
        est.gpu_per_rank = (w + g + o) // ws
    else:
        est.gpu_per_rank = w + g + o
    _cpu_path(est, report, layout, optim_files, files_by_role, ws, loaded_weights)
    _limits(est, ram, gpu_mem, local_ram)
    return est


def _cpu_path(est: MemoryEstimate, report: Report, layout: str, optim_files: dict[str, int],
              files_by_role: dict[str, int], ws: int, loaded_weights: int) -> None:
    w = est.weights_bytes
    if est.sharding.startswith("zero"):
        per_rank_optim = max(optim_files.values(), default=0)
        est.cpu_ram_steps = [("model weights (*_model_states.pt), then released", loaded_weights),
                             ("this rank's *_optim_states.pt, loaded whole", per_rank_optim)]
        est.consolidation_ram = sum(optim_files.values()) + est.params * 4
        # DeepSpeed's load_checkpoint reads the model states, copies them into the module and
        # drops them (engine._load_checkpoint returns) before it reads this rank's optim states
        # (_load_zero_checkpoint; other ranks' files only with elastic_checkpoint): the peak is
        # the larger of the two, not their sum (measured: tests/test_estimate_zero_real.py).
        # ZeRO-3 (deepspeed 0.19 runtime/zero/stage3.py): the model states' `module` holds
        # empty placeholders (loaded_weights is ~0, not the model's weights), and
        # _rigid_load_state_dict takes this rank's optim file only (elastic checkpoints are
        # refused), copy_()s its fp32_flat_groups into the existing fp32 partitions, hands
        # the Adam moments to torch's optimizer.load_state_dict (same dtype and device: kept,
        # not copied), then copies fp32 -> the module's partitions and re-views them
        # (unflatten): no allocation beyond the file, so the peak is the optim file too
        est.cpu_ram_per_rank = max(loaded_weights, per_rank_optim)
        return
    elif layout in ("lightning",) or (report.layout.name == "file" and len(files_by_role) == 1):
        total = sum(files_by_role.values())
        est.cpu_ram_steps = [("the whole checkpoint file, loaded by torch.load", total)]
    elif (chunks := _dcp_largest_chunks(report)) and (
            est.sharding == "fsdp" or layout in ("dcp", "llama-recipes", "torchtitan")):
        # torch.distributed.checkpoint (torch 2.13 filesystem.py FileSystemReader.read_data):
        # dcp.load fills the state dict the job already holds (the sharded model's parameters
        # and the optimizer state get_state_dict created), so the share is not allocated again.
        # For every read item it torch.load()s the whole saved chunk (one torch.save'd tensor)
        # into a new CPU tensor, narrows it to the part this rank needs (default_planner:
        # narrow_tensor_by_index), copy_()s it into the target and drops it; the name `tensor`
        # still holds the previous chunk while the next one loads, so two chunks coexist: the
        # peak is the two largest (Adam's exp_avg and exp_avg_sq of the largest parameter are
        # consecutive). Under resharding a rank still loads whole saved chunks, one at a time.
        est.cpu_ram_steps = [("the two largest saved DCP chunks (dcp.load reads one at a time "
                              "into the job's own sharded state)", sum(chunks))]
    elif est.sharding == "fsdp" or layout in ("dcp", "llama-recipes", "torchtitan"):
        est.cpu_ram_steps = [("this rank's share of the shards (weights + optimizer)",
                              (w + est.optimizer_bytes) // ws)]
    elif layout in ("accelerate", "hf-trainer") and not _dcp_largest_chunks(report):
        # Accelerate's load_state (accelerate 1.15 checkpointing.py load_accelerator_state),
        # not under DeepSpeed / FSDP: first every model, one at a time: model[_i].safetensors
        # through safetensors' load_model (load_file of the whole file, model.load_state_dict
        # copies into the existing parameters, the dict is dropped when load_model returns;
        # pytorch_model[_i].bin the same with torch.load); then every optimizer[_i].bin, torch.load
        # whole, handed to optimizer.load_state_dict, which keeps the loaded moments as its
        # state (same dtype and device: Tensor.to returns them, no copy; only param_groups is
        # deep-copied), and they stay.
        # The Trainer's resume (transformers 5 trainer.py): _load_from_checkpoint load_file()s
        # model.safetensors, load_state_dict()s it and `del state_dict` (sharded weights:
        # load_sharded_checkpoint, one shard at a time, each dropped); only then, in the
        # training loop, _load_optimizer_and_scheduler torch.loads optimizer.pt whole into
        # the optimizer, where it stays.
        # So in both the weights are gone before the optimizer state comes: the peak is the
        # larger of the largest model file and the optimizer files, not the sum (measured:
        # tests/test_estimate_accelerate_real.py, tests/test_estimate.py).
        per_file: dict[str, int] = {}
        for f in report.files:
            for t in f.tensors:
                if _role(f.path, t) == "weights":
                    per_file[f.path] = per_file.get(f.path, 0) + t.nbytes
        model_step = max(per_file.values(), default=0)
        optim = sum(optim_files.values())
        est.cpu_ram_steps = [("the largest model file, copied into the model, then released",
                              model_step),
                             ("the optimizer file(s), loaded whole by torch.load, kept as the "
                              "optimizer's state", optim)]
        est.cpu_ram_per_rank = max(model_step, optim)
        return
    else:
        optim = sum(optim_files.values())
        est.cpu_ram_steps = [("model weights", w)]
        if optim:
            est.cpu_ram_steps.append(("optimizer state loaded whole by torch.load on every rank",
                                      optim))
    est.cpu_ram_per_rank = sum(n for _, n in est.cpu_ram_steps)


def _dcp_largest_chunks(report: Report) -> list[int]:
    """The two largest tensor chunks any DCP .metadata of the checkpoint records, in bytes."""
    sizes = [n for f in report.files for n in f.meta.get("largest_chunks") or ()
             if isinstance(n, int)]
    return sorted(sizes, reverse=True)[:2]


def local_available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _limits(est: MemoryEstimate, ram: int | None, gpu_mem: int | None,
            local_ram: int | None) -> None:
    where = "--ram"
    if ram is None:
        ram = local_ram if local_ram is not None else local_available_ram()
        where = "this machine's available memory"
    need = max(est.cpu_ram_per_rank, est.consolidation_ram or 0)
    if ram is not None and est.cpu_ram_per_rank > ram:
        est.findings.append(Code.EST_OVER_RAM.finding(
            "", f"resume needs about {human(est.cpu_ram_per_rank)} of CPU RAM per rank, "
                f"{where} is {human(ram)}", hint="load on a bigger host, or reshard so each "
                                                 "rank loads less", need=est.cpu_ram_per_rank,
            have=ram))
    elif ram is not None and est.consolidation_ram and need > ram:
        est.findings.append(Code.EST_OVER_RAM.finding(
            "", f"consolidating to fp32 needs about {human(est.consolidation_ram)} of CPU RAM, "
                f"{where} is {human(ram)}", need=est.consolidation_ram, have=ram))
    if gpu_mem is not None and est.gpu_per_rank > gpu_mem:
        est.findings.append(Code.EST_OVER_GPU.finding(
            "", f"weights + gradients + optimizer state need about {human(est.gpu_per_rank)} "
                f"per rank ({est.sharding}, world size {est.world_size}), --gpu-mem is "
                f"{human(gpu_mem)}", hint="use a higher ZeRO stage / FSDP, more ranks, or "
                                          "CPU offload", need=est.gpu_per_rank, have=gpu_mem))


def human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def render_text(est: MemoryEstimate) -> str:
    """The estimate as a few lines (appended to inspect's text)."""
    lines = [f"resume memory of {est.checkpoint} (estimate from metadata): {est.params:,} "
             "parameters, "
             f"weights {human(est.weights_bytes)}, gradients {human(est.grads_bytes)}, optimizer "
             f"{human(est.optimizer_bytes)}{'' if est.optimizer_recorded else ' (assumed AdamW)'}",
             f"  per rank ({est.sharding}, world size {est.world_size}): GPU "
             f"{human(est.gpu_per_rank)}, CPU RAM to load {human(est.cpu_ram_per_rank)}"]
    for step, n in est.cpu_ram_steps:
        lines.append(f"    {human(n):>10}  {step}")
    if est.consolidation_ram:
        lines.append(f"  consolidating to fp32 needs {human(est.consolidation_ram)} of CPU RAM")
    for f in est.findings:
        lines.append(f"  {f.code} {f.severity}: {f.message}")
    return "\n".join(lines) + "\n"


def parse_bytes(text: str | None) -> int | None:
    """'16GB' / '16GiB' / '1.5e9' -> bytes (no torch import: convert.common is pure Python)."""
    if text is None:
        return None
    from .convert.common import parse_size

    try:
        return int(float(text)) if re.fullmatch(r"\d+(\.\d+)?(e\d+)?", text.strip()) else \
            parse_size(text)
    except ValueError:
        raise ValueError(f"bad size {text!r}: use e.g. 16GB, 512MB, 2GiB") from None


__all__ = ["MemoryEstimate", "estimate", "render_text", "local_available_ram", "parse_bytes",
           "human"]
