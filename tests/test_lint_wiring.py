"""ruff and mypy are part of the test command: `make test` runs `make lint` before pytest (so
`.ci/run` does too), and a fresh venv has both tools from the dev extra."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rule(makefile: str, target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of `target` in a Makefile."""
    m = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n)*)", makefile, re.M)
    assert m, f"no `{target}:` rule"
    return m.group(1).split(), [line.strip() for line in m.group(2).splitlines()]


def test_make_test_runs_lint_before_pytest():
    makefile = (ROOT / "Makefile").read_text()
    prereqs, recipe = _rule(makefile, "test")
    assert "lint" in prereqs
    assert any("pytest" in line for line in recipe)
    _, lint = _rule(makefile, "lint")
    assert any("ruff check" in line and all(d in line.split() for d in
                                            ("ckptdoctor", "tests", "tools", "benchmarks"))
               for line in lint), lint
    assert any(line.endswith("-m mypy") for line in lint), lint
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_dev_extra_installs_the_lint_tools():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = {re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()
           for req in project["project"]["optional-dependencies"]["dev"]}
    assert {"ruff", "mypy"} <= dev
    assert project["tool"]["ruff"]["line-length"] == 100
    assert set(project["tool"]["ruff"]["lint"]["select"]) == {"E", "F", "I", "B", "UP", "SIM"}


def test_no_module_is_over_500_lines():
    """A module that grows past 500 lines is split along its seams (issue 11's rule)."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "ckptdoctor").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
