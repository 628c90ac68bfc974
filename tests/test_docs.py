"""Docs that cannot rot: every finding code is documented, every command has a page, and the
README gives a newcomer the two commands."""

import re
from pathlib import Path

from ckptdoctor.codes import Code

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_is_documented_in_validate_md():
    text = (ROOT / "docs" / "validate.md").read_text()
    documented = set(re.findall(r"`(CK\d{3})`", text))
    assert {c.code for c in Code} <= documented, sorted({c.code for c in Code} - documented)
    assert documented <= {c.code for c in Code}, "docs list a code that does not exist"


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_guides_linked_from_readme_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), link
