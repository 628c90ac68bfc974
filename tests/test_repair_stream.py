"""repair/stream_save.py: a rewritten torch zip gets a new data.pkl while its tensor records are
copied byte for byte from the original file (not read through memory); tensors a rule created
are written from memory; views and shared storages survive; a file replaced between the load
and the save is refused; a legacy (non-zip) file is still saved with torch.save. Peak memory on
a real DeepSpeed shard: tests/test_repair_memory.py."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptdoctor.formats.zip_view import torch_records
from ckptdoctor.repair import repair
from ckptdoctor.repair.plan import convert_file
from ckptdoctor.repair.stream_save import SourceChanged, mappings_of, save_repaired


def _records(path: Path) -> dict[str, tuple[int, int]]:
    """archive-relative record name -> (size, CRC32)."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename.split("/", 1)[1]: (i.file_size, i.CRC) for i in zf.infolist()}


def _needs_repair(path: Path) -> dict:
    w = torch.arange(300_000, dtype=torch.float32)
    obj = {"w": w, "view": w[10:20], "t": w.view(600, 500).t(), "half": torch.ones(7).half(),
           "step": np.float64(3.5), "lr": np.float32(0.25)}
    torch.save(obj, path)
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)
    return obj


def test_tensor_records_are_copied_from_the_original(tmp_path):
    f = tmp_path / "optim.pt"
    obj = _needs_repair(f)
    before = _records(f)
    result = repair(tmp_path, consumer="torch")
    assert result.exit_code == 0, result.findings
    assert result.outcome("optim.pt").status == "replaced"
    after = _records(f)
    data = {k: v for k, v in before.items() if k.startswith("data/")}
    assert data and {k: v for k, v in after.items() if k.startswith("data/")} == data
    assert after["byteorder"][0] == len(b"little") and "version" in after
    assert {".format_version", ".storage_alignment", "data.pkl", ".data/serialization_id"} <= \
        set(after)
    with open(f, "rb") as fh:  # laid out as torch's writer does: data 64-byte aligned
        view = torch_records(fh, f.stat().st_size)
    assert not view.error
    assert all(r.data_offset % 64 == 0 for r in view.records if "/data/" in r.name)
    for mmap in (False, True):
        new = torch.load(f, weights_only=True, mmap=mmap)
        assert new["step"] == 3.5 and type(new["step"]) is float and new["lr"] == 0.25
        assert torch.equal(new["w"], obj["w"]) and new["half"].dtype == torch.float16
        # views keep their storage: one storage for w, view and t
        ptr = new["w"].untyped_storage().data_ptr()
        assert new["view"].untyped_storage().data_ptr() == ptr
        assert new["view"].storage_offset() == 10 and torch.equal(new["view"], obj["view"])
        assert new["t"].untyped_storage().data_ptr() == ptr
        assert new["t"].stride() == (1, 500) and torch.equal(new["t"], obj["t"])


def test_a_tensor_a_rule_creates_is_written_from_memory(tmp_path):
    f = tmp_path / "state.pt"
    arr = np.arange(5000, dtype=np.int64)  # > 1024 items: the numpy-array rule makes a tensor
    torch.save({"weight": torch.randn(64, 64), "table": arr}, f)
    converted, _ = convert_file(f)
    assert isinstance(converted["table"], torch.Tensor)
    out = tmp_path / "new.pt"
    how = save_repaired(converted, out, f, f.stat())
    assert how.startswith("1 storage record(s) copied") and "1 written from memory" in how
    new = torch.load(out, weights_only=True)
    assert torch.equal(new["table"], torch.from_numpy(arr))
    assert torch.equal(new["weight"], converted["weight"])


def test_the_mapping_of_the_loaded_original_is_found(tmp_path):
    f = tmp_path / "m.pt"
    torch.save({"w": torch.ones(10_000), "s": np.float64(1.0)}, f)
    converted, _ = convert_file(f)  # loaded with mmap: its storages live in the file mapping
    st = f.stat()
    maps = mappings_of(st.st_dev, st.st_ino)
    ptr = converted["w"].untyped_storage().data_ptr()
    assert any(lo <= ptr < hi for lo, hi, _ in maps)


def test_a_file_replaced_after_the_load_is_not_copied_from(tmp_path):
    f = tmp_path / "a.pt"
    torch.save({"w": torch.ones(1000), "s": np.float64(1.0)}, f)
    converted, _ = convert_file(f)
    read = f.stat()
    other = tmp_path / "b.pt"
    torch.save({"w": torch.zeros(1000), "s": 1.0}, other)
    os.replace(other, f)  # same path, another file
    out = tmp_path / "new.pt"
    with pytest.raises(SourceChanged, match="changed"):
        save_repaired(converted, out, f, read)
    assert not out.exists()


def test_a_legacy_file_is_saved_with_torch_save(tmp_path):
    f = tmp_path / "old.pt"
    torch.save({"w": torch.arange(10.0), "s": np.float64(2.0)}, f,
               _use_new_zipfile_serialization=False)
    converted, _ = convert_file(f)
    out = tmp_path / "new.pt"
    assert save_repaired(converted, out, f, f.stat()) == "written with torch.save"
    new = torch.load(out, weights_only=True)
    assert torch.equal(new["w"], torch.arange(10.0)) and new["s"] == 2.0
    result = repair(tmp_path / "old.pt", consumer="torch")
    assert result.exit_code == 0 and result.outcome("old.pt").status == "replaced"
