"""Checkpoint layouts: which framework wrote a directory, what it recorded, and what its resume
needs. `LAYOUTS` is the one ordered registry, most specific first: a layout later in the tuple
may also match a directory an earlier one claims (an HF checkpoint holds a DeepSpeed tag, a
Lingua step is a DCP dir), never the other way round."""

from __future__ import annotations

import os
from pathlib import Path

from .accelerate import Accelerate
from .base import Consumer, DirView, Evidence, Layout
from .dcp import Dcp
from .deepspeed import DeepSpeed
from .file import File
from .hf_model import HfModel
from .hf_run import HfRun
from .hf_trainer import HfTrainer
from .lightning import Lightning, describe_file
from .lingua import Lingua
from .llama_recipes import LlamaRecipesFsdp
from .megatron import Megatron
from .peft import Peft
from .torchtitan import Torchtitan

LAYOUTS: tuple[Layout, ...] = (
    Lightning(), Megatron(), Torchtitan(), Lingua(), LlamaRecipesFsdp(), HfRun(), HfTrainer(),
    Accelerate(), DeepSpeed(), Peft(), HfModel(), Dcp(), File(),
)
LAYOUT_NAMES = tuple(layout.name for layout in LAYOUTS)
# who to ask, in order, which framework object wrote a file's pickled globals (diagnosis):
# the most telling signs first (DeepSpeed classes, then per-framework file names)
PRODUCERS: tuple[Layout, ...] = tuple(
    layout for name in ("deepspeed", "hf-trainer", "accelerate", "megatron", "lightning")
    for layout in LAYOUTS if layout.name == name)


# who wrote a single file, as far as repair's rules care (file_flavour): content evidence
# outranks a file name; within each, this order (Megatron-DeepSpeed files carry both)
FLAVOURS: tuple[Layout, ...] = tuple(
    layout for name in ("lightning", "megatron", "deepspeed", "hf-trainer", "accelerate")
    for layout in LAYOUTS if layout.name == name)


def file_flavour(rel: str, root: object) -> str:
    """The layout name of the framework that wrote the file `rel` whose (transcoded) root
    object is `root`, or "torch". Each layout module owns its own signs (`wrote_file`)."""
    base = rel.rsplit("/", 1)[-1]
    keys = frozenset(k for k in root if isinstance(k, str)) if isinstance(root, dict) else None
    root_global = getattr(type(root), "standin_name", None)  # a stand-in's class name
    claims = [(layout.wrote_file(base, keys, root_global), layout) for layout in FLAVOURS]
    for evidence in Evidence:
        for claim, layout in claims:
            if claim is evidence:
                return layout.name
    return "torch"


def detect_layout(d: DirView) -> Layout | None:
    """The first layout (in registry order) that recognises `d`."""
    return next((layout for layout in LAYOUTS if layout.match(d)), None)


def layout_named(name: str) -> Layout | None:
    return next((layout for layout in LAYOUTS if layout.name == name), None)


def checkpoint_paths(layout: Layout, d: DirView) -> list[str]:
    """Relative paths of the checkpoints a run layout holds (its own `children`)."""
    return layout.children(d)


def summary_keys(name: str) -> tuple[str, ...]:
    """The details a layout shows on its one text line (see LayoutBase.summary_keys)."""
    layout = layout_named(name) or File()
    return layout.summary_keys()


def find_checkpoints(d: DirView) -> list[str]:
    """Directories below `d` (relative to it, sorted) that a layout recognises. A recognised
    directory is not searched further (its parts are not separate checkpoints); a symlink to a
    directory inside `d` (`latest -> step-9`) is skipped, its target is listed on its own."""
    # a storage.RemotePath: no links to follow
    inside = Path(os.path.realpath(d.root)) if isinstance(d.root, Path) else None
    seen: set[str] = set()

    def walk(view: DirView, pre: str) -> list[str]:
        found = []
        for name in (x for x in view.dirs if "/" not in x):
            path = view.root / name
            real = os.path.realpath(path) if isinstance(path, Path) else str(path)
            if real in seen or (inside is not None and path.is_symlink() and
                                Path(real).is_relative_to(inside)):
                continue
            seen.add(real)
            sub = view.sub(name)
            found += [pre + name] if detect_layout(sub) else walk(sub, f"{pre}{name}/")
        return found

    return sorted(walk(d, ""))


__all__ = ["LAYOUTS", "LAYOUT_NAMES", "Consumer", "DirView", "Layout", "detect_layout",
           "describe_file", "find_checkpoints", "checkpoint_paths", "layout_named",
           "summary_keys", "PRODUCERS", "FLAVOURS", "file_flavour", "Evidence"]
