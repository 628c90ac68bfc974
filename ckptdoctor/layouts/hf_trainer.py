"""HF Trainer `checkpoint-<global_step>/`: weights (full, sharded, adapter, FSDP or DeepSpeed),
optimizer.pt + scheduler.pt, rng_state[_<rank>].pth and trainer_state.json (written last).

Resume needs trainer_state.json and one weights form; it loads optimizer and scheduler only if
BOTH exist and otherwise skips them silently; a missing rng file only logs at info level. So
the silent cases are warnings here, the crashing ones errors."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo
from . import deepspeed, hf_model, peft
from .accelerate import Accelerate
from .base import (
    DCP_CONSUMER,
    NUMPY_RNG,
    SAFETENSORS,
    Consumer,
    DirView,
    Evidence,
    LayoutBase,
    check_dcp,
    check_index,
    dcp_ranks,
    is_dcp,
    load_json,
    missing,
    numbered,
    top_dirs,
    top_files,
    weights_details,
)
from .versions import Env

# The classes a Trainer (or TRL's trainers) pickle into training_args.bin.
TRAINING_ARGS = re.compile(r"^(transformers\.training_args(_seq2seq)?\.\w*TrainingArguments|"
                           r"trl\.trainer\.[\w.]*Config)$")

NAME_RE = re.compile(r"checkpoint-(\d+)")
RNG = Consumer("weights_only", NUMPY_RNG, who="transformers Trainer._load_rng_state")
# Trainer._load_rng_state called torch.load(rng_file) without weights_only inside
# safe_globals(), a nullcontext before torch 2.6: on torch < 2.6 it unpickled anything.
# transformers 5.0 (PR #43140, 5.0.0rc3) passes weights_only=True and refuses torch < 2.6.
RNG_WEIGHTS_ONLY_SINCE = (5, 0, 0)


def rng_consumer(env: Env) -> Consumer:
    """How the Trainer of `env` loads rng_state[_<rank>].pth."""
    if env.torch_default_weights_only() or env.at_least("transformers",
                                                         RNG_WEIGHTS_ONLY_SINCE):
        return RNG
    return Consumer("unsafe", who=f"transformers {env.version('transformers')} "
                    f"Trainer._load_rng_state on torch {env.version('torch')} "
                    "(torch.load's default weights_only=False)")
LOAD = Consumer("weights_only", who="transformers Trainer (torch.load(weights_only=True))")
ARGS = Consumer("unused", who="Trainer never reads it on resume")
UNREAD = Consumer("unused", who="Trainer resume never opens it")
# generation_config.json, the PEFT model card and adapter_config.json (the Trainer reloads the
# adapter weights into the model it was given), DeepSpeed's conversion scripts
UNREAD_TOP = frozenset({"training_args.bin", "generation_config.json", "README.md",
                        "adapter_config.json", "zero_to_fp32.py", "zero_to_torch.py"})
FSDP_WEIGHTS = ("pytorch_model_fsdp.bin",)


def dropout(d: DirView) -> str | None:
    """'name=p' of the first dropout probability > 0 the model config or adapter config
    records (config.json *dropout* / *pdrop*, adapter_config.json lora_dropout), else None."""
    for rel in ("config.json", "adapter_config.json"):
        cfg = d.read_json(rel) if d.has(rel) else None
        for k, v in (cfg.items() if isinstance(cfg, dict) else []):
            if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and v > 0:
                return f"{k}={v}"
    return None
DS, PEFT, ACCELERATE = deepspeed.DeepSpeed(), peft.Peft(), Accelerate()


def name_step(d: DirView) -> int | None:
    m = NAME_RE.fullmatch(d.root.name)
    return int(m.group(1)) if m else None


def fsdp_dirs(d: DirView) -> list[str]:
    """accelerate's sharded FSDP state: pytorch_model_fsdp_<i>/ and optimizer_<i>/ (DCP)."""
    return [s for s in top_dirs(d) if s.startswith(("pytorch_model_fsdp", "optimizer"))
            and is_dcp(d, s)]


def weights_form(d: DirView) -> tuple[str | None, list[str]]:
    """(kind, files) of the weights resume would load, as Trainer._load_from_checkpoint checks."""
    name = hf_model.weight_file(d)
    if name:
        return ("bin" if ".bin" in name else "safetensors"), [name]
    adapter = peft.adapter_file(d)
    if adapter or peft.adapter_dirs(d):
        return "adapter", [adapter] if adapter else []
    if any(f in FSDP_WEIGHTS for f in top_files(d)) or any(
            s.startswith("pytorch_model_fsdp") for s in fsdp_dirs(d)):
        return "fsdp", []
    if deepspeed.tags(d):
        return "deepspeed", []
    return None, []


def rng_ranks(d: DirView) -> dict[int, str]:
    return numbered(top_files(d), r"rng_state_(\d+)\.pth")


def world_size(d: DirView) -> int | None:
    """Saved world size: DeepSpeed's dp*mp, FSDP's shard writers, or the rng files."""
    ws = deepspeed.world_size(d)
    if ws:
        return ws
    ranks = set(rng_ranks(d))
    for s in fsdp_dirs(d):
        ranks |= dcp_ranks(d, s)
    return max(ranks) + 1 if ranks else None


class HfTrainer(LayoutBase):
    name = "hf-trainer"
    framework = "transformers"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        """trainer_state.json, or a non-empty `checkpoint-N` that lost it. Accelerate-based
        scripts (diffusers) also name their save_state dirs checkpoint-N: not claimed here."""
        return d.has("trainer_state.json") or (
            name_step(d) is not None and bool(d.files) and not ACCELERATE.match(d))

    def describe(self, d: DirView) -> LayoutInfo:
        state = d.read_json("trainer_state.json")
        state = state if isinstance(state, dict) else {}
        kind, files = weights_form(d)
        details: dict[str, Any] = {"weights": kind, **weights_details(d, files),
                                   **hf_model.config_details(d)}
        details["epoch"] = state.get("epoch")
        logs = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
        for key in ("learning_rate", "loss"):
            details[key] = next((e[key] for e in reversed(logs) if key in e), None)
        details["max_steps"] = state.get("max_steps")
        details["world_size"] = world_size(d)
        if DS.match(d):
            details["deepspeed"] = DS.describe(d).details
        if kind == "adapter":
            details["peft"] = peft.adapter_details(d)
        step = state.get("global_step")
        return LayoutInfo(self.name, d.rel, step if isinstance(step, int) else name_step(d),
                          {k: v for k, v in details.items() if v is not None})

    def checks(self, d: DirView) -> list[Finding]:
        out = self.check_state(d)
        ds = DS.match(d)
        kind, files = weights_form(d)
        if kind is None:
            out.append(missing(d, "model.safetensors", "no model weights (model.safetensors, "
                               "pytorch_model.bin, an index, adapter_model.*, FSDP or DeepSpeed "
                               "state): resume raises \"Can't find a valid checkpoint\""))
        elif kind == "adapter":
            out += PEFT.checks(d)
        elif files and files[0].endswith(".index.json"):
            out += check_index(d, files[0])
        for s in fsdp_dirs(d):
            out += check_dcp(d, s)
        if ds:
            out += DS.checks(d)
        else:
            out += self.check_optimizer(d)
        out += self.check_rng(d)
        return out

    def check_state(self, d: DirView) -> list[Finding]:
        """trainer_state.json parses (CK401/CK415) and its global_step is N (CK404)."""
        state, out = load_json(d, "trainer_state.json", "Trainer loads it unconditionally on "
                               "resume (FileNotFoundError); it is written last, so the save "
                               "did not finish")
        n = name_step(d)
        step = state.get("global_step") if isinstance(state, dict) else None
        if n is not None and state is not None and step != n:
            out.append(Code.STEP_MISMATCH.finding(
                d.outer("trainer_state.json"), f"global_step is {step!r} but the directory "
                f"says {n}", hint="the state comes from another save; resume would restart "
                "the schedule at the wrong step", global_step=step, dir_step=n))
        return out

    def check_optimizer(self, d: DirView) -> list[Finding]:
        """Both optimizer and scheduler, or resume silently loads neither (CK401/CK416)."""
        top = set(top_files(d))
        opt = bool(top & {"optimizer.pt", "optimizer.bin"}) or any(
            "optimizer" in s for s in top_dirs(d))
        sched = "scheduler.pt" in top
        if opt and sched:
            return []
        if not opt and not sched:
            return [Code.MODEL_ONLY.finding(
                d.outer(""), "no optimizer.pt and no scheduler.pt: resume restarts the "
                "optimizer and LR schedule from scratch", hint="expected with "
                "save_only_model=True; otherwise the save was cut short")]
        gone = "scheduler.pt" if opt else "optimizer.pt"
        # measured (tests/oracle): the Trainer then builds a fresh optimizer AND scheduler and
        # the run goes on with different losses; a silent restart of the state is an error
        return [missing(d, gone, "Trainer loads optimizer and scheduler only when both exist, "
                        "so resume silently restarts both and the run continues from different "
                        "state", "use a checkpoint that has both")]

    def check_rng(self, d: DirView) -> list[Finding]:
        """rng_state_<i>.pth for every rank < saved world size: an error (CK401) when the
        model applies dropout (the RNG then decides the next losses), else CK405."""
        ranks = rng_ranks(d)
        ws = world_size(d)
        if not ranks and d.has("rng_state.pth") and (ws or 1) == 1:
            return []
        gone = ["rng_state.pth"] if not ranks and not d.has("rng_state.pth") else \
            [f"rng_state_{r}.pth" for r in range(ws or 0) if r not in ranks]
        p = dropout(d)
        out = []
        for rel in gone:
            rank = numbered([rel], r"rng_state_(\d+)\.pth")
            extra: dict[str, Any] = {"rank": min(rank)} if rank else {}
            if p:
                out.append(Code.MISSING_FILE.finding(
                    d.outer(rel), f"{rel} is missing: the model applies dropout ({p}), so the "
                    "fresh RNG resume falls back to (it only logs the missing file) continues "
                    "the run with different losses", "use a checkpoint that has it", **extra))
            else:
                out.append(Code.RNG_RANK_MISSING.finding(
                    d.outer(rel), f"{rel} is missing: resume only logs this and continues with a "
                    "fresh RNG (no dropout is recorded in config.json / adapter_config.json, so "
                    "the losses need not change; data order and sampling may)", **extra))
        return out

    def unread(self, d: DirView, rel: str) -> bool:
        """Files the Trainer's resume never opens (measured by tests/oracle): damage to them is
        at most a warning.  With DeepSpeed the weights come from the tag, not the top level."""
        name = rel.rsplit("/", 1)[-1]
        if "/" in rel:
            return False
        return name in UNREAD_TOP or (DS.match(d) and (name == "config.json"
                                                       or hf_model.is_weights(name)))

    def consumer(self, d: DirView, rel: str) -> Consumer:
        first, _, _ = rel.partition("/")
        name = rel.rsplit("/", 1)[-1]
        if "/" in rel and deepspeed.is_tag(d, first):
            return deepspeed.load_consumer(d.env)
        if "/" in rel and first in fsdp_dirs(d):
            return DCP_CONSUMER
        if name.startswith("rng_state"):
            return rng_consumer(d.env)
        if name == "training_args.bin":
            return ARGS
        if self.unread(d, rel):
            return UNREAD
        if name.endswith(".safetensors"):
            return SAFETENSORS
        return LOAD

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """training_args.bin holds a TrainingArguments; rng_state*.pth the Trainer's RNG."""
        if root_global and TRAINING_ARGS.match(root_global):
            return Evidence.CONTENT
        if re.fullmatch(r"rng_state(_\d+)?\.pth", base) or base == "training_args.bin":
            return Evidence.NAME
        return None

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        """The Trainer's RNG state (numpy arrays) and its TrainingArguments pickle."""
        numpy_array = any(n.endswith("multiarray._reconstruct") for n in names)
        if numpy_array and (fnmatch(base, "rng_state*.pth") or "trainer" in lay
                            or "transformers" in lay):
            return ("the HF Trainer RNG state (rng_state.pth['numpy'] = np.random.get_state())",
                    "transformers PR #34632 loads rng_state inside safe_globals with numpy's "
                    "_reconstruct, ndarray, dtype and UInt32DType under their numpy._core "
                    "names; it still fails for files with numpy-1 names (numpy.core.*) read "
                    "under numpy 2 and for numpy scalars")
        if base == "training_args.bin":
            return ("transformers TrainingArguments (training_args.bin)",
                    "the Trainer never reads training_args.bin on resume; only scripts that "
                    "torch.load it fail")
        return None
