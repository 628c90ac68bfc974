"""Docs that cannot rot: every finding code is documented, every command has a page, and the
README gives a newcomer the two commands."""

import re
from pathlib import Path

from ckptdoctor.codes import TABLE_END, TABLE_START, Code, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_validate_md_code_table_is_generated_from_codes_py():
    """The table is `ckptdoctor codes --markdown`; regenerate it when a code changes."""
    text = (ROOT / "docs" / "validate.md").read_text()
    start = text.index(TABLE_START) + len(TABLE_START)
    assert text[start:text.index(TABLE_END)].strip() == markdown_table()
    assert all(c.fix for c in Code), [c.code for c in Code if not c.fix]


def test_every_code_is_emitted_somewhere():
    """A code nobody emits is dead surface: each member is used as Code.NAME in the package."""
    src = "\n".join(p.read_text() for p in (ROOT / "ckptdoctor").rglob("*.py")
                    if p.name != "codes.py")
    used = set(re.findall(r"\bCode\.([A-Z][A-Z0-9_]+)", src))
    assert {c.name for c in Code} - used == set()


def test_codes_command_prints_one_code_and_refuses_unknown_prefixes(tmp_path):
    from typer.testing import CliRunner

    from ckptdoctor.cli import app

    r = CliRunner().invoke(app, ["codes", "CK101"])
    assert r.exit_code == 0 and r.output.startswith("CK101  error  ")
    assert CliRunner().invoke(app, ["codes", "--markdown"]).output.strip() == markdown_table()
    r = CliRunner().invoke(app, ["codes", "CK99"])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["validate", "--select", "CK4O1", str(tmp_path)])
    assert r.exit_code == 2 and "CK091" in r.output


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_guides_linked_from_readme_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), link


def _cli_reference() -> str:
    """docs/cli.md: every command's --help, as the CLI prints it at 100 columns."""
    from typer.testing import CliRunner

    from ckptdoctor.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    parts = ["# CLI reference\n",
             "Generated from the commands' own `--help` (tests/test_docs.py checks it; "
             "`UPDATE_DOCS=1 pytest tests/test_docs.py` rewrites it). Each command also has "
             "its own page with examples.\n"]
    for name in [None, *names]:
        args = ([name] if name else []) + ["--help"]
        out = CliRunner().invoke(app, args, prog_name="ckptdoctor", terminal_width=100,
                                 env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}).output
        title = f"ckptdoctor {name}" if name else "ckptdoctor"
        parts.append(f"## {title}\n\n```text\n" + out.rstrip() + "\n```\n")
    return "\n".join(parts)


def test_cli_reference_equals_every_commands_help():
    import os

    import pytest

    page = ROOT / "docs" / "cli.md"
    if os.environ.get("UPDATE_DOCS"):
        page.write_text(_cli_reference())
        pytest.skip("wrote docs/cli.md: review it; nothing was compared (UPDATE_DOCS)")
    assert page.read_text() == _cli_reference(), "run UPDATE_DOCS=1 pytest tests/test_docs.py"


def test_every_command_has_a_page():
    from ckptdoctor.cli import app

    for c in app.registered_commands:
        name = c.name or c.callback.__name__
        assert name == "codes" or (ROOT / "docs" / f"{name}.md").is_file(), name
