"""PyTorch Lightning: a `.ckpt` torch zip (epoch, global_step, pytorch-lightning_version,
state_dict, loops, optimizer_states, hyper_parameters...), or a `.ckpt` DIRECTORY written by the
DeepSpeed strategy (`checkpoint/` tag + `latest`) or by FSDP sharded saves (DCP + `meta.pt`),
or the `checkpoints/` dir holding several of them (`last.ckpt` may be a dangling symlink).

Lightning >= 2.6 resumes with `torch.load(weights_only=True)`, and `hyper_parameters` live in
the same pickle, so an unsafe global there fails `fit(ckpt_path=...)` although resume never
uses hparams. A `save_weights_only` checkpoint has no optimizer_states: fit() raises KeyError."""

from __future__ import annotations

from typing import Any

from ..codes import Code
from ..model import FileInfo, Finding, FormatName, LayoutInfo
from ..pickles.scan import lookup, top_keys
from ..storage import AnyPath
from . import deepspeed
from .base import (
    DCP_CONSUMER,
    Consumer,
    DirView,
    Evidence,
    LayoutBase,
    check_dcp,
    dcp_keys,
    is_dcp,
    join,
    missing,
    plain,
    top_dirs,
    top_files,
)
from .dirview import read_pickle_root
from .versions import Env

LOAD = Consumer("weights_only", who="Lightning >= 2.6 Trainer.fit(ckpt_path) "
                "(torch.load(weights_only=True), hyper_parameters included)")
VERSION = "pytorch-lightning_version"
# Loader history (checkpoint_connector / fabric cloud_io._load): < 2.4 passes no weights_only,
# so torch's default applies (True from torch 2.6); 2.4-2.5 hard-code weights_only=False
# (Lightning PR #20010, commit bf25167bbf, first tag 2.4.0: fabric cloud_io._load
# `weights_only: bool = False`); >= 2.6.0 defers to torch again, i.e. True (PR #21072, commit
# 29abe6e47d, first tag 2.6.0: `weights_only=None`, passed through for local files; issue
# #20058). Checked in the Lightning-AI/pytorch-lightning history.
UNSAFE_SINCE, WEIGHTS_ONLY_SINCE = (2, 4, 0), (2, 6, 0)


def load_consumer(env: Env) -> Consumer:
    """How the Lightning of `env` loads a `.ckpt` in Trainer.fit(ckpt_path=...)."""
    version = env.version("lightning")
    if version is None or env.at_least("lightning", WEIGHTS_ONLY_SINCE):
        return LOAD
    if env.at_least("lightning", UNSAFE_SINCE):
        return Consumer("unsafe", who=f"Lightning {version} (torch.load(weights_only=False))")
    if env.torch_default_weights_only():
        return Consumer("weights_only", who=f"Lightning {version} on torch "
                        f"{env.version('torch')} (torch.load's default weights_only=True)")
    return Consumer("unsafe", who=f"Lightning {version} on torch {env.version('torch')} "
                    "(torch.load's default weights_only=False)")
DS = deepspeed.DeepSpeed()


def is_lightning(root: Any) -> bool:
    keys = set(top_keys(root))
    return VERSION in keys or {"state_dict", "loops"} <= keys


def ckpt_details(root: Any) -> tuple[int | None, dict[str, Any]]:
    """(global_step, details) from a Lightning checkpoint dict (or DeepSpeed client state)."""
    details = {"epoch": plain(lookup(root, "epoch")), VERSION: plain(lookup(root, VERSION)),
               "has_optimizer_states": "optimizer_states" in top_keys(root)}
    return plain(lookup(root, "global_step")), {k: v for k, v in details.items() if v is not None}


def describe_file(path: AnyPath, info: FileInfo) -> LayoutInfo:
    """A single file: `lightning` for a Lightning .ckpt, else `file`."""
    if path.suffix == ".ckpt" and info.format == FormatName.TORCH_ZIP:
        root = read_pickle_root(path)
        if is_lightning(root):
            step, details = ckpt_details(root)
            return LayoutInfo("lightning", info.path, step, {"form": "file", **details})
    return LayoutInfo("file", info.path, None, {"format": info.format})


def dir_form(d: DirView, sub: str = "") -> str | None:
    """'deepspeed' or 'fsdp' for a `.ckpt` directory, else None."""
    name = sub.rsplit("/", 1)[-1] if sub else d.root.name
    if not name.endswith(".ckpt") or not (d.root / sub).is_dir():
        return None
    if d.has(join(sub, "latest")) or deepspeed.is_tag(d, join(sub, "checkpoint")):
        return "deepspeed"
    return "fsdp" if d.has(join(sub, "meta.pt")) or is_dcp(d, sub) else None


def state_root(d: DirView, sub: str, form: str) -> Any:
    """Where Lightning's own keys live: the file, DeepSpeed client state, or FSDP meta.pt."""
    if form == "deepspeed":
        tag = join(sub, "checkpoint")
        names = sorted(f for f in top_files(d, tag) if deepspeed.MODEL_RE.fullmatch(f))
        return d.pickle_root(join(tag, names[0])) if names else None
    return d.pickle_root(join(sub, "meta.pt") if form == "fsdp" else sub)


def entries(d: DirView) -> dict[str, str]:
    """{name: form} of the Lightning checkpoints directly in a run's checkpoints dir."""
    out = {s: form for s in top_dirs(d) if (form := dir_form(d, s))}
    out.update({f: "file" for f in top_files(d)
                if f.endswith(".ckpt") and is_lightning(d.pickle_root(f))})
    return dict(sorted(out.items()))


def form_of(d: DirView) -> str | None:
    if d.root.is_file():
        return "file" if d.root.suffix == ".ckpt" and is_lightning(d.pickle_root("")) else None
    return dir_form(d) or ("run" if entries(d) else None)


def check_one(d: DirView, sub: str, form: str) -> list[Finding]:
    if form == "deepspeed":  # DeepSpeed keeps the optimizer in its own files
        return DS.checks(d.sub(sub) if sub else d)
    out = []
    if form == "fsdp":
        out += check_dcp(d, sub)
        if not d.has(join(sub, "meta.pt")):
            out.append(missing(d, join(sub, "meta.pt"), "Lightning recognises a sharded "
                               "checkpoint by it and restores loops and callbacks from it"))
        keys = dcp_keys(d.dcp_metadata(sub))
        model_only = bool(keys) and not any(k.startswith("optimizer") for k in keys)
    else:
        model_only = "optimizer_states" not in top_keys(state_root(d, sub, form))
    if model_only:
        out.append(Code.MODEL_ONLY.finding(
            d.outer(sub), "no optimizer states (saved with save_weights_only=True): "
            "Trainer.fit(ckpt_path=...) raises KeyError", hint="use it with "
            "load_from_checkpoint, or resume from a full checkpoint"))
    return out


class Lightning(LayoutBase):
    name = "lightning"
    framework = "lightning"  # whose resume (and version) the verdict models

    def match(self, d: DirView) -> bool:
        return form_of(d) is not None

    def describe(self, d: DirView) -> LayoutInfo:
        form = form_of(d)
        assert form is not None  # match() holds
        if form == "file":
            return describe_file(d.root, d.info(""))
        if form == "run":
            found = []
            for name, f in entries(d).items():
                step, details = ckpt_details(state_root(d, name, f))
                found.append({"name": name, "form": f, "step": step, **details})
            steps = [e["step"] for e in found if isinstance(e["step"], int)]
            return LayoutInfo(self.name, d.rel, max(steps, default=None),
                              {"form": "run", "checkpoints": found})
        step, details = ckpt_details(state_root(d, "", form))
        return LayoutInfo(self.name, d.rel, step, {"form": form, **details})

    def checks(self, d: DirView) -> list[Finding]:
        form = form_of(d)
        assert form is not None  # match() holds
        if form != "run":
            return check_one(d, "", form)
        out = []
        for name, f in entries(d).items():
            out += check_one(d, name, f)
        return out

    def consumer(self, d: DirView, rel: str) -> Consumer:
        parts = rel.split("/")
        form = form_of(d)
        if form == "run" and len(parts) > 1:
            form = dir_form(d, parts[0])
            parts = parts[1:]
        if form == "deepspeed":
            return deepspeed.load_consumer(d.env)
        if form == "fsdp" and parts[-1] != "meta.pt":
            return DCP_CONSUMER
        return load_consumer(d.env)

    def wrote_file(self, base: str, keys: frozenset[str] | None,
                   root_global: str | None) -> Evidence | None:
        """A Lightning checkpoint records `pytorch-lightning_version` at its root."""
        return Evidence.CONTENT if keys and "pytorch-lightning_version" in keys else None

    def producer(self, base: str, names: set[str], lay: str = "") -> tuple[str, str] | None:
        if not (base.endswith(".ckpt") or "lightning" in lay):
            return None
        return ("a PyTorch Lightning checkpoint (`hyper_parameters` / `hparams_type`, callback "
                "or loop state)",
                "Lightning 2.4-2.5 loaded with weights_only=False; Lightning >= 2.6 defers to "
                "torch (weights_only=True), so upgrading does not fix it: repair the file, or "
                "pass weights_only=False to Trainer.fit for a file you trust")
