"""What a finding code is and does, apart from the table of codes itself (`codes.Code`, which
subclasses `CodeEnum` and holds the members): each member's severity, title, doc and fix, the
Finding it makes, lookup by prefix, docs/validate.md's code table, and `--select` / `--ignore`
filtering of findings."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .model import Finding, Severity

if TYPE_CHECKING:
    from typing_extensions import Self

TABLE_START = ("<!-- codes:start (generated from ckptdoctor/codes.py: "
               "`ckptdoctor codes --markdown`) -->")
TABLE_END = "<!-- codes:end -->"


class CodeEnum(enum.Enum):
    """A finding-code enum: each member is (code, severity, title, doc, fix)."""

    severity: Severity
    title: str
    doc: str
    fix: str

    def __new__(cls, code: str, severity: Severity, title: str, doc: str = "", fix: str = ""):
        obj = object.__new__(cls)
        obj._value_ = code
        obj.severity = severity
        obj.title = title
        obj.doc = doc
        obj.fix = fix
        return obj

    @property
    def code(self) -> str:
        return self.value

    @property
    def explanation(self) -> str:
        return self.doc or self.title

    def finding(self, path: str, message: str = "", hint: str = "",
                severity: Severity | None = None, **detail) -> Finding:
        return Finding(self.value, severity if severity is not None else self.severity, path,
                       message or self.title, hint, dict(detail))

    @classmethod
    def markdown_table(cls) -> str:
        """The code table of docs/validate.md (tests/test_docs.py keeps the page equal to it)."""
        rows = ["| code | severity | meaning | what to do |", "| --- | --- | --- | --- |"]
        rows += [f"| `{c.code}` | {c.severity} | {c.explanation} | {c.fix} |" for c in cls]
        return "\n".join(rows)

    @classmethod
    def lookup(cls, prefix: str) -> list[Self]:
        """Codes starting with `prefix` (case-insensitive): `CK1`, `ck101`."""
        return [c for c in cls if c.code.startswith(prefix.upper())]


def select(findings: list[Finding], select: list[str] | None, ignore: list[str] | None
           ) -> list[Finding]:
    """Keep findings whose code starts with a --select prefix and none of the --ignore ones."""
    out = []
    for f in findings:
        if select and not any(f.code.startswith(p) for p in select):
            continue
        if ignore and any(f.code.startswith(p) for p in ignore):
            continue
        out.append(f)
    return out
