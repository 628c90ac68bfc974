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


def test_repair_plan_and_outcome_are_enums_and_json_keeps_the_strings(tmp_path):
    from ckptdoctor.repair import plan_repair, repair
    from ckptdoctor.repair.model import Action, RepairTarget, Status
    from tests.fixtures.factory import make_numpy_state

    path = make_numpy_state(tmp_path)  # numpy RNG state: weights_only refuses it, repair rewrites
    plan = plan_repair(path, to="torch")
    assert plan.to is RepairTarget.TORCH and [f.action for f in plan.files] == [Action.REWRITE]
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["to"] == "torch" and doc["files"][0]["action"] == "rewrite"
    result = repair(path, no_backup=True)
    assert [o.status for o in result.outcomes] == [Status.REPLACED]
    assert json.dumps(result.outcomes[0].to_json()["status"]) == '"replaced"'


def test_convert_dispatches_on_the_target_enum(tmp_path):
    import pytest

    from ckptdoctor.convert import CONVERTERS, ConvertError, ConvertTarget, convert

    assert all(type(to) is ConvertTarget for _, to in CONVERTERS)
    src = make_torch_zip(tmp_path)
    result = convert(src, tmp_path / "out.safetensors", "safetensors")
    assert result.to is ConvertTarget.SAFETENSORS
    assert json.loads(json.dumps(result.to_json()))["to"] == "safetensors"
    with pytest.raises(ConvertError) as info:
        convert(src, tmp_path / "out.onnx", "onnx")
    assert info.value.finding.code == "CK705" and "choose one of safetensors, torch, dcp, safe" \
        in info.value.finding.message
