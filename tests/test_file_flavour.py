"""Which framework wrote a single file (repair's flavour: its rules keep what that framework's
resume needs, e.g. Megatron's `args` Namespace). Each layout module owns its own signs
(`Layout.wrote_file`); `layouts.file_flavour` asks them, content evidence before file names.

The files are written by the real libraries (Lightning's Trainer, transformers'
TrainingArguments saved the way the Trainer saves it, accelerate's save_state); the Megatron and
DeepSpeed files are the factory's hand-built ones (see tests/fixtures/factory.py). The expected
flavour is who wrote the file, known independently of the code under test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ckptdoctor.formats import detect_file
from ckptdoctor.layouts import FLAVOURS, LAYOUT_NAMES, file_flavour
from ckptdoctor.repair.transcode import offending_names, transcoding_load

try:
    from tests.fixtures import factory as F
except ImportError:
    from fixtures import factory as F

NUMPY1 = Path(__file__).parent / "fixtures" / "numpy1"


def flavour_of(path: Path, vouch: bool = False) -> str:
    """What repair's engine computes for `path`: the transcoded root, then the layouts' vote.
    `vouch`: the user vouches for every unknown global (as `repair --allow` would)."""
    names = offending_names(detect_file(path))
    tc = transcoding_load(path, names, allow=names if vouch else ())
    return file_flavour(path.name, tc.obj)


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    assert found, f"no {pattern} under {root}"
    return found[0]


def test_every_flavour_is_a_registered_layout():
    assert [layout.name for layout in FLAVOURS] == [
        "lightning", "megatron", "deepspeed", "hf-trainer", "accelerate"]
    assert set(layout.name for layout in FLAVOURS) <= set(LAYOUT_NAMES)


def test_lightning_checkpoint_by_content(tmp_path):
    ckpt = F.make_lightning_ckpt(tmp_path / "lit")
    path = ckpt if ckpt.is_file() else _one(ckpt, "*.ckpt")
    assert flavour_of(path) == "lightning"
    # content outranks a name: the same checkpoint under an HF Trainer file name
    renamed = tmp_path / "rng_state.pth"
    shutil.copy(path, renamed)
    assert flavour_of(renamed) == "lightning"


def test_training_arguments_by_content_under_any_name(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    path = tmp_path / "args_copy.bin"  # not training_args.bin: only the content can tell
    torch.save(args, path)  # what Trainer._save does with self.args
    # it pickles accelerate's PartialState (distributed_state): unknown, so vouched here
    assert flavour_of(path, vouch=True) == "hf-trainer"


def test_hf_trainer_rng_state_by_name(tmp_path):
    path = tmp_path / "rng_state_1.pth"
    shutil.copy(NUMPY1 / "rng_state.pth", path)
    assert flavour_of(path) == "hf-trainer"


def test_accelerate_random_states_by_name(tmp_path):
    state = F.make_accelerate_state(tmp_path / "acc")
    assert flavour_of(_one(state, "random_states_0.pkl")) == "accelerate"


@pytest.mark.parametrize("name, expected", [
    ("model_optim_rng.pt", "megatron"),
    # Megatron-DeepSpeed names its files like DeepSpeed's; the Megatron keys decide
    ("mp_rank_00_model_states.pt", "megatron"),
])
def test_megatron_by_content(tmp_path, name, expected):
    run = F.make_megatron(tmp_path / "meg")
    path = tmp_path / name
    shutil.copy(_one(run, "model_optim_rng.pt"), path)
    assert flavour_of(path) == expected


def test_deepspeed_optimizer_states(tmp_path):
    run = F.make_deepspeed(tmp_path / "ds", stage=2, world_size=1)
    assert flavour_of(_one(run, "*optim_states.pt")) == "deepspeed"


def test_plain_state_dict_is_torch(tmp_path):
    path = F.make_torch_zip(tmp_path, filename="model_states.bin")
    assert flavour_of(path) == "torch"
