"""Accelerate `save_state`: model[_<i>].safetensors (or pytorch_model[_<i>].bin),
optimizer[_<i>].bin, scheduler[_<i>].bin, random_states_<rank>.pkl, custom_checkpoint_<i>.pkl;
FSDP as pytorch_model_fsdp_<i>/ + optimizer_<i>/ (DCP), DeepSpeed as pytorch_model/ + latest.

`load_state` opens model/optimizer/scheduler i for every registered object (FileNotFoundError),
but wraps the RNG restore in `except Exception: logger.info(...)`: a missing or unloadable
random_states file is never an error there, the run just silently loses reproducibility."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from typing import Any

from ..codes import Code
from ..model import Finding, LayoutInfo
from ..pickles.scan import lookup
from . import deepspeed
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
    missing,
    numbered,
    plain,
    top_dirs,
    top_files,
    weights_details,
)

SAFE_GLOBALS = NUMPY_RNG | {"_codecs.encode"}  # accelerate.utils.other.TORCH_SAFE_GLOBALS
LOAD = Consumer("weights_only", SAFE_GLOBALS, who="accelerate.utils.load")
RNG = Consumer("weights_only", SAFE_GLOBALS, who="accelerate load_state (RNG restore: errors "
               "are caught and only logged)", fatal=False)
CUSTOM = Consumer("unsafe", who="accelerate load_custom_state (weights_only=False)")
RNG_RE = r"random_states_(\d+)\.pkl"
CUSTOM_RE = r"custom_checkpoint_(\d+)\.pkl"
DS = deepspeed.DeepSpeed()


def indexed(names: list[str], stem: str, ext: str) -> dict[int, str]:
    """Accelerate numbers the i-th object `<stem>_<i><ext>`, the first one plain `<stem><ext>`."""
    out = numbered(names, rf"{re.escape(stem)}_(\d+){re.escape(ext)}")
    if stem + ext in names:
        out[0] = stem + ext
    return out


def models(names: list[str]) -> dict[int, str]:
    return {**indexed(names, "pytorch_model", ".bin"), **indexed(names, "model", ".safetensors")}


def has_initial_lr(root: Any) -> bool:
    """Whether a (symbolic) optimizer state_dict's param_groups hold an `initial_lr` key."""
    from ..pickles.scan import SymDict

    groups = lookup(root, "param_groups")
    return isinstance(groups, list) and any(
        isinstance(g, SymDict) and any(k == "initial_lr" for k, _ in g) for g in groups)


def cut_short(d: DirView, names: list[str]) -> bool:
    """Nothing but Accelerate-numbered model files (no config.json, no subdirectory): what a
    save_state killed after the models (written first) leaves; measured: load_state then
    raises FileNotFoundError.  No HF model (config.json) and no other layout looks like this."""
    mods = models(names)
    return bool(mods) and set(names) == set(mods.values()) and not top_dirs(d)


def gaps(found: dict[int, str]) -> list[int]:
    return [i for i in range(max(found, default=-1) + 1) if i not in found]


def fsdp_dirs(d: DirView) -> list[str]:
    return [s for s in top_dirs(d) if is_dcp(d, s)]


class Accelerate(LayoutBase):
    name = "accelerate"
    framework = "accelerate"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        """Accelerate's own names: RNG or custom state files, or optimizer/scheduler .bin next to
        model weights (HF Trainer, matched earlier, writes optimizer.pt)."""
        names = top_files(d)
        own = numbered(names, RNG_RE) or numbered(names, CUSTOM_RE)
        states = indexed(names, "optimizer", ".bin") or indexed(names, "scheduler", ".bin")
        return bool(own or (models(names) and states) or cut_short(d, names))

    def describe(self, d: DirView) -> LayoutInfo:
        names = top_files(d)
        rng = numbered(names, RNG_RE)
        step = plain(lookup(d.pickle_root(rng[min(rng)]), "step")) if rng else None
        m = re.fullmatch(r"checkpoint_(\d+)", d.root.name)  # automatic_checkpoint_naming
        mods = models(names)
        details: dict[str, Any] = {
            "iteration": int(m.group(1)) if m else None,
            "world_size": max(rng) + 1 if rng else None,
            "num_models": len(mods), "num_optimizers": len(indexed(names, "optimizer", ".bin")),
            "num_schedulers": len(indexed(names, "scheduler", ".bin")),
            **weights_details(d, [mods[0]] if 0 in mods else []),
        }
        if deepspeed.tags(d):
            details["deepspeed"] = DS.describe(d).details
        return LayoutInfo(self.name, d.rel, step, {k: v for k, v in details.items()
                                                   if v is not None})

    def checks(self, d: DirView) -> list[Finding]:
        names = top_files(d)
        out = []
        mods, opts = models(names), indexed(names, "optimizer", ".bin")
        dcp, ds = fsdp_dirs(d), deepspeed.tags(d)
        if not mods and not dcp and not ds:
            out.append(missing(d, "model.safetensors", "load_state opens model i for every "
                               "prepared model (FileNotFoundError)"))
        for stem, found, ext in (("model", mods, ".safetensors"), ("optimizer", opts, ".bin"),
                                 ("scheduler", indexed(names, "scheduler", ".bin"), ".bin")):
            out += [missing(d, f"{stem}_{i}{ext}" if i else stem + ext,
                            f"{stem} {i} of {max(found) + 1}: load_state opens one file per "
                            "prepared object (FileNotFoundError)") for i in gaps(found)]
        customs = numbered(names, CUSTOM_RE)
        out += [missing(d, f"custom_checkpoint_{i}.pkl", "load_state raises RuntimeError when "
                        "the count differs from the registered objects") for i in gaps(customs)]
        out += self.check_state_pairs(d, names)
        if mods and not opts and not dcp and not ds and not self.implies_optimizer(names):
            out.append(Code.MODEL_ONLY.finding(
                d.outer(""), "no optimizer[_<i>].bin: load_state fails if the run prepared an "
                "optimizer, and a fresh one loses the training state"))
        for index in (n for n in names if n.endswith(".index.json")):
            out += check_index(d, index)
        for sub in dcp:
            out += check_dcp(d, sub)
        if ds or d.has("latest"):
            out += DS.checks(d)
        out += self.check_rng(d, names)
        return out

    @staticmethod
    def implies_optimizer(names: list[str]) -> bool:
        """A scheduler is built on an optimizer: scheduler*.bin without optimizer*.bin means
        load_state will ask for an optimizer file that is gone."""
        return bool(indexed(names, "scheduler", ".bin"))

    def check_state_pairs(self, d: DirView, names: list[str]) -> list[Finding]:
        """Measured (tests/oracle): load_state raises FileNotFoundError for a prepared
        optimizer or scheduler whose file is gone.  A scheduler proves its optimizer was
        prepared; an optimizer whose param_groups carry `initial_lr` (set by every torch
        LRScheduler) proves a scheduler was prepared."""
        opts, scheds = indexed(names, "optimizer", ".bin"), indexed(names, "scheduler", ".bin")
        out = []
        if scheds and not opts:
            out.append(missing(d, "optimizer.bin", f"{scheds[min(scheds)]} exists, so the run "
                               "prepared an optimizer: load_state opens optimizer.bin "
                               "(FileNotFoundError)", "use a checkpoint that has it"))
        if opts and not scheds and any(has_initial_lr(d.pickle_root(o)) for o in opts.values()):
            out.append(missing(d, "scheduler.bin", "the optimizer's param_groups carry "
                               "initial_lr, so the run prepared an LR scheduler: load_state "
                               "opens scheduler.bin (FileNotFoundError)",
                               "use a checkpoint that has it"))
        return out

    def check_rng(self, d: DirView, names: list[str]) -> list[Finding]:
        """random_states_<rank>.pkl per rank.  save_state always writes them (last), and
        load_state catches their absence: the run continues with a fresh RNG, which draws other
        batches / dropout masks (measured: different losses), so a missing one is CK401."""
        rng = numbered(names, RNG_RE)
        ranks = set(rng)
        for sub in fsdp_dirs(d):
            ranks |= dcp_ranks(d, sub)
        ws = max(ranks) + 1 if ranks else 1
        return [Code.MISSING_FILE.finding(
            d.outer(f"random_states_{r}.pkl"), f"random_states_{r}.pkl is missing: accelerate "
            f"catches the error and rank {r} resumes with a fresh RNG, silently, so the run "
            "continues with different batches and losses (save_state writes it last: a save "
            "cut short lacks it)", hint="use a checkpoint that has it", rank=r)
            for r in range(ws) if r not in rng]

    def consumer(self, d: DirView, rel: str) -> Consumer:
        first, _, rest = rel.partition("/")
        if rest and deepspeed.is_tag(d, first):
            return deepspeed.load_consumer(d.env)
        if rest and first in fsdp_dirs(d):
            return DCP_CONSUMER
        if re.fullmatch(RNG_RE, rel):
            return RNG
        if rel.startswith("custom_checkpoint_"):
            return CUSTOM
        return SAFETENSORS if rel.endswith(".safetensors") else LOAD

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """save_state writes one random_states_<rank>.pkl per process."""
        return Evidence.NAME if re.fullmatch(r"random_states_\d+\.pkl", base) else None

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        """accelerate's RNG state (numpy arrays), whose load failure accelerate swallows."""
        numpy_array = any(n.endswith("multiarray._reconstruct") for n in names)
        if not (numpy_array and (fnmatch(base, "random_states_*.pkl") or "accelerate" in lay)):
            return None
        return ("the Accelerate RNG state (random_states_<i>.pkl['numpy_random_seed'] = "
                "np.random.get_state())",
                "accelerate PR #3036 allow-lists numpy's _reconstruct, ndarray, dtype (and "
                "UInt32DType on numpy >= 1.25) in accelerate.utils.load and PR #3247 adds the "
                "numpy._core names; note accelerate catches this failure and resumes WITHOUT "
                "restoring the RNG ('Could not load random states')")
