"""Adversarial review of "bad input = one line on stderr, a stable code, a non-zero exit, never a
Python traceback" for every command. Each case is a defect found by attacking the CLI; the
checkpoints are written by torch.save / safetensors on tiny tensors."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
ENV.pop("CKPTDOCTOR_DEBUG", None)
ONE_LINE = re.compile(r"ckptdoctor: (internal )?error: (CK\d{3} )?\S")


def cli(*args: str, cwd: Path, hang_guard: int = 600) -> subprocess.CompletedProcess:
    """hang_guard: not a speed bound, only how long a blocked process is waited for."""
    return subprocess.run([PY, "-m", "ckptdoctor", *args], capture_output=True, text=True,
                          timeout=hang_guard, env=ENV, cwd=cwd, stdin=subprocess.DEVNULL)


def assert_one_line_error(r: subprocess.CompletedProcess, code: str | None = None) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert r.returncode in (1, 2), (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ONE_LINE.match(lines[0]), r.stderr[-2000:]
    if code is not None:
        assert code in lines[0], lines[0]
    return lines[0]


def test_convert_to_dcp_with_keys_that_flatten_to_the_same_name_is_one_line(tmp_path):
    """{"a": {"b": t}, "a.b": t2} flattens to "a.b" twice. DCP's save raises
    CheckpointException, a BaseException (not an Exception): before, it escaped the CLI's
    last line of defence as a multi-page traceback with exit 1 and a half-made staging dir."""
    src = tmp_path / "collide.pt"
    torch.save({"a": {"b": torch.ones(1)}, "a.b": torch.ones(2)}, src)
    dst = tmp_path / "out"
    r = cli("convert", str(src), str(dst), "--to", "dcp", cwd=tmp_path)
    line = assert_one_line_error(r, "CK7")
    assert "a.b" in line
    assert r.returncode == 1
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collide.pt"]  # no staging left


@pytest.mark.parametrize("cmd", [["convert", "{x}", "{dst}", "--to", "safetensors"],
                                 ["convert", "{x}", "{dst}", "--to", "dcp"],
                                 ["diff", "{x}", "{good}"]], ids=["convert-st", "convert-dcp",
                                                                  "diff"])
def test_convert_and_diff_never_open_a_fifo(tmp_path, cmd):
    """A FIFO as SRC: before, convert's source detection opened it to read the magic bytes and
    blocked forever (no writer) or read `yes` output without end. Now CK004, exit 1 (convert)
    or 2 (diff, whose own errors are CK901), one line; the FIFO is never opened (a reader
    would block: the command returning at all shows it was not)."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    args = [a.format(x=fifo, dst=tmp_path / "out", good=good) for a in cmd]
    r = cli(*args, cwd=tmp_path, hang_guard=120)
    line = assert_one_line_error(r, "CK004")
    assert "never opened" in line
    assert not (tmp_path / "out").exists()


def test_convert_of_a_fifo_fed_without_end_is_refused(tmp_path):
    """The /dev/zero-like case: a FIFO with a writer that never stops (`yes`)."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    writer = subprocess.Popen(f"exec yes > '{fifo}'", shell=True, stderr=subprocess.DEVNULL)
    try:
        r = cli("convert", str(fifo), str(tmp_path / "out"), "--to", "torch", cwd=tmp_path,
                hang_guard=120)
    finally:
        writer.kill()
        writer.wait()
        with contextlib.suppress(OSError):  # unblock a writer stuck in open() if nothing read
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert_one_line_error(r, "CK004")
    assert r.returncode == 1
