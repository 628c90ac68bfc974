"""Reading one side of a diff: every file of a checkpoint (any supported kind) through the
readers in convert/, its entries sorted into sections; tensors stay lazy."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import Severity
from .report import RANK_FILE, Section, unreadable

# top-level keys of a checkpoint dict -> the section they hold (Lightning, torchtitan, DCP
# saves, hand-written training loops)
_SECTION_KEYS: dict[str, Section] = {
    **{k: Section.WEIGHTS for k in ("state_dict", "model", "model_state_dict", "module",
                                    "model_state", "net", "weights")},
    **{k: Section.OPTIMIZER for k in ("optimizer", "optimizer_states", "optimizer_state_dict",
                                      "optim", "optimizer_state", "optimizers")},
    **{k: Section.SCHEDULER for k in ("lr_scheduler", "lr_schedulers", "scheduler",
                                      "schedulers", "scheduler_state_dict")},
    **{k: Section.RNG for k in ("rng", "rng_state", "rng_states", "rng_tracker_states",
                                "random_rng_state", "np_rng_state", "torch_rng_state",
                                "cuda_rng_state")},
}
# files beside the weights in a training directory (HF Trainer, Accelerate)
_TRAINING_FILES: tuple[tuple[re.Pattern, Section], ...] = (
    (re.compile(r"^optimizer.*\.(pt|bin)$"), Section.OPTIMIZER),
    (re.compile(r"^scheduler.*\.(pt|bin)$"), Section.SCHEDULER),
    (re.compile(r"^(rng_state.*\.pth|random_states_\d+\.pkl)$"), Section.RNG),
)


@dataclass
class Side:
    path: Path
    kind: str
    tensors: dict[Section, dict[str, Any]] = field(default_factory=dict)  # -> TensorEntry
    values: dict[Section, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    closers: list[Any] = field(default_factory=list, repr=False)

    def add(self, section: Section, key: str, value: Any) -> None:
        from ..convert.common import TensorEntry

        bucket = self.tensors if isinstance(value, TensorEntry) else self.values
        store = bucket.setdefault(section, {})
        other = (self.values if bucket is self.tensors else self.tensors).get(section, {})
        if key in store or key in other:
            raise unreadable(self.path, f"{key} appears twice in {section.value}")
        store[key] = value

    def keys(self, section: Section) -> set[str]:
        return set(self.tensors.get(section, {})) | set(self.values.get(section, {}))

    def close(self) -> None:
        for c in self.closers:
            c.close()



def open_side(path: str | os.PathLike, allow: tuple[str, ...] = (), trust: bool = False) -> Side:
    """Read the structure of one checkpoint (tensors stay lazy). Raises DiffError."""
    from ..convert.common import ConvertError, Options

    path = Path(path)
    opts = Options(None, allow=tuple(allow), trust=trust)  # read only: no target
    try:
        return _open(path, opts)
    except ConvertError as exc:
        cause = next((f for f in exc.findings[1:] if f.severity is Severity.ERROR), exc.finding)
        raise unreadable(path, f"{cause.code} {cause.message}", cause.hint) from None


def _open(path: Path, opts: Any) -> Side:
    from ..convert.loading import load_torch
    from ..convert.sources import detect, safetensors_files, torch_files

    kind = detect(path)
    side = Side(path, kind)
    root = path if path.is_dir() else path.parent
    if kind == "safetensors":
        _add_safetensors(side, safetensors_files(path))
    elif kind == "torch":
        for f in torch_files(path):
            side.files.append(f.name)
            _add_object(side, load_torch(f, opts), str(f))
    elif kind == "lightning":
        side.files.append(path.name)
        _add_object(side, load_torch(path, opts), str(path))
    elif kind == "dcp":
        _add_dcp(side, path, opts)
    elif kind == "deepspeed":
        _add_deepspeed(side, path, opts)
    else:
        raise unreadable(path, f"diff does not read {kind} checkpoints",
                          hint="convert it first (ckptdoctor convert ... --to torch)")
    if path.is_dir():
        _add_training_files(side, root, opts)
    side.files = sorted(set(side.files))
    return side


def _add_safetensors(side: Side, files: list[Path]) -> None:
    from ..convert.st_emit import read_extras
    from ..convert.st_io import SafetensorsFile

    aliases: dict[str, str] = {}
    for p in files:
        f = SafetensorsFile(p)
        side.closers.append(f)
        side.files.append(p.name)
        for name in f.names():
            side.add(Section.WEIGHTS, name, f.entry(name))
        aliases.update({k: v for k, v in f.metadata.items() if k != "format"})
    weights = side.tensors.setdefault(Section.WEIGHTS, {})
    for alias, kept in aliases.items():  # tied tensors stored once come back under both names
        if alias not in weights and kept in weights:
            weights[alias] = weights[kept]
    stem = files[0].name.split(".")[0].split("-0")[0]
    extra = files[0].parent / f"{stem}.extra.json"
    if extra.is_file():
        for key, value in read_extras(extra).items():  # sorted as a torch file's top keys are
            _add_value(side, _classify(key) or Section.OTHER, key, value)


def _add_value(side: Side, section: Section, key: str, value: Any) -> None:
    import torch

    from ..convert.common import tensor_entry

    if isinstance(value, torch.Tensor):
        side.add(section, key, tensor_entry(key, value))
    elif isinstance(value, Mapping) and value and all(isinstance(k, (str, int)) for k in value):
        for k, v in value.items():  # DCP's naming: nested plain containers join with '.'
            _add_value(side, section, f"{key}.{k}", v)
    elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            _add_value(side, section, f"{key}.{i}", v)
    else:
        side.add(section, key, value)


def _classify(key: Any) -> Section | None:
    return _SECTION_KEYS.get(str(key).lower()) if isinstance(key, str) else None


def _add_object(side: Side, obj: Any, origin: str, role: Section | None = None,
                prefix: str = "") -> None:
    """Flatten a loaded object into sections: by `role` when the file says what it is (e.g.
    optimizer.pt), else by its top-level keys; a dict of tensors with no known key is weights."""
    import torch

    from ..convert.common import TensorEntry
    from ..convert.sources import flatten

    def put(section: Section, key: str, value: Any) -> None:
        _add_value(side, section, f"{prefix}{key}", value)

    if role is not None:
        for key, value in flatten(obj, origin):
            put(role, key, value)
        return
    if not isinstance(obj, Mapping) or not any(_classify(k) for k in obj):
        for key, value in flatten(obj, origin):
            put(Section.WEIGHTS if isinstance(value, (torch.Tensor, TensorEntry))
                else Section.OTHER, key, value)
        return
    weight_keys = [k for k in obj if _classify(k) is Section.WEIGHTS]
    for top, value in obj.items():
        section = _classify(top) or Section.OTHER
        if section is Section.WEIGHTS and len(weight_keys) == 1 and isinstance(value, Mapping):
            for key, leaf in flatten(value, origin):  # the state dict's own keys
                put(section, key, leaf)
        else:
            for key, leaf in flatten({top: value}, origin):
                put(section, key, leaf)


def _add_dcp(side: Side, path: Path, opts: Any) -> None:
    from ..convert.dcp_to_torch import source

    ckpt, values = source(path, opts)
    side.closers.append(ckpt)
    side.files += [".metadata", *sorted(p.name for p in ckpt.root.glob("*.distcp"))]
    tree, how = ckpt.tree(values)
    if how != "flat":  # the nesting a torch conversion writes: both flatten the same way
        _add_object(side, tree, str(path))
        return
    for key, value in values.items():
        head, _, rest = key.partition(".")
        section = _classify(head) or Section.OTHER
        _add_value(side, section, rest if section is Section.WEIGHTS and rest else key, value)


def _add_deepspeed(side: Side, path: Path, opts: Any) -> None:
    from ..convert.deepspeed_read import leaves
    from ..convert.loading import load_torch

    ckpt, entries = leaves(path, opts)
    tag = ckpt.tag
    side.files += [f"{tag.name}/{p.name}" for p in tag.glob("*.pt")]
    for name, entry in entries:
        side.add(Section.WEIGHTS, name, entry)
    skip = {"module", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
            "shared_params", "buffer_names", "optimizer", "lr_scheduler", "ds_config",
            "ds_version",
            "dp_world_size"}  # the layout, not the state: CK912 reports another world size
    m0 = ckpt.models[0]
    for key, value in m0.items():
        if key == "lr_scheduler" and value is not None:
            _add_object(side, value, str(tag), Section.SCHEDULER, "lr_scheduler.")
        elif key not in skip:
            _add_object(side, {key: value}, str(tag), Section.OTHER)
    # the optimizer moments live per rank in the flat partitions of each *_optim_states.pt
    bases = []
    for rank, f in enumerate(sorted(tag.glob("*_optim_states.pt"), key=lambda p: _natural(p.name))):
        osd = load_torch(f, opts).get("optimizer_state_dict", {})
        base = None
        if isinstance(osd, Mapping):  # ZeRO-1/2: base_optimizer_state; ZeRO-3: optimizer_state_dict
            base = osd.get("base_optimizer_state", osd.get("optimizer_state_dict"))
        bases.append((rank, f, base))
    if len(bases) == ckpt.world and all(isinstance(b, Mapping) and "state" in b
                                        for _, _, b in bases):
        # per parameter, as for the whole model (ZeRO-3: convert/zero3_state.py): the same for
        # any world size, so a checkpoint and its reshard line up
        from ..convert.common import ConvertError
        from ..convert.deepspeed_read import unsharded_optimizer

        try:
            tensors, values = unsharded_optimizer(ckpt, [b for _, _, b in bases])
        except ConvertError:  # not flat per partition (a factored moment): per rank below
            tensors, values = [], {}
        else:
            for key, entry in tensors:
                side.add(Section.OPTIMIZER, key, entry)
            for key, value in values.items():
                _add_value(side, Section.OPTIMIZER, key, value)
            return
    for rank, f, base in bases:
        if base is not None:
            _add_object(side, base, str(f), Section.OPTIMIZER, f"rank{rank}.")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _add_training_files(side: Side, root: Path, opts: Any) -> None:
    import json

    from ..convert.loading import load_torch

    names = sorted(p.name for p in root.iterdir() if p.is_file())
    for name in names:
        for pattern, section in _TRAINING_FILES:
            if pattern.match(name) and name not in side.files:
                side.files.append(name)
                stem = name.rsplit(".", 1)[0]
                _add_object(side, load_torch(root / name, opts), str(root / name), section,
                            f"{stem}.")
    if "trainer_state.json" in names:
        side.files.append("trainer_state.json")
        try:
            doc = json.loads((root / "trainer_state.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise unreadable(root / "trainer_state.json", f"does not parse: {exc}") from None
        if isinstance(doc, dict):
            for key, value in doc.items():
                side.add(Section.OTHER, f"trainer_state.{key}", value)
    side.files += [n for n in names if RANK_FILE.search(n) and n not in side.files]
