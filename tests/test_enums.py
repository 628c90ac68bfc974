"""Concepts compared across modules are enums, and str-valued ones keep output byte-identical:
JSON, text and f-strings show the value, never `FormatName.TORCH_ZIP`."""

from __future__ import annotations

import json

import torch

from ckptdoctor.formats import FORMAT_NAMES, detect_file
from ckptdoctor.model import FormatName
from tests.fixtures.factory import make_safetensors, make_torch_zip


def test_format_names_are_the_released_strings():
    # hand-written: the strings the JSON schema has always carried
    assert [str(f) for f in FORMAT_NAMES] == [
        "torch-zip", "torch-legacy", "pickle", "safetensors", "numpy", "dcp-metadata",
        "dcp-shard", "zip", "json", "text", "empty", "unknown"]


def test_a_detected_format_is_the_enum_and_renders_as_its_value(tmp_path):
    info = detect_file(make_torch_zip(tmp_path))
    assert info.format is FormatName.TORCH_ZIP
    assert json.dumps(info.to_json()["format"]) == '"torch-zip"'
    assert f"{info.format}|{info.format:>10}" == "torch-zip| torch-zip"
    assert detect_file(make_safetensors(tmp_path)).format is FormatName.SAFETENSORS
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert detect_file(legacy).format is FormatName.TORCH_LEGACY
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")  # a zero-byte file: what an interrupted save leaves
    assert detect_file(empty).format is FormatName.EMPTY
