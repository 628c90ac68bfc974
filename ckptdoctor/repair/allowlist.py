"""The allow-list written next to a checkpoint whose kept objects need one.

    ckptdoctor-allowlist.json   {"version": 1, "allowlist": [...], "files": {rel: {"allowlist",
                                 "sha256", "why"}}}: machine-readable, merged across runs
    ckptdoctor_safe_globals.py  `import ckptdoctor_safe_globals` (or copy its lines) before
                                 resuming: registers the kept classes under the names the
                                 files use, with torch.serialization.add_safe_globals

Both are generated from the same entries, so they never disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ALLOWLIST_FILE = "ckptdoctor-allowlist.json"
SNIPPET_FILE = "ckptdoctor_safe_globals.py"


def _import_line(name: str) -> tuple[str, str]:
    """('from module import Qual', 'Qual') for a dotted global (module.Qual)."""
    module, _, qual = name.rpartition(".")
    alias = qual.replace(".", "_")
    if module == "_io":  # BytesIO's home module; `io` re-exports the same class
        module = "io"
    return f"from {module} import {qual} as {alias}" if alias != qual else \
        f"from {module} import {qual}", alias


def safe_globals_snippet(names: list[str], context: bool = True) -> str:
    """Ready-to-paste code. Tuples with the dotted name, so the name in the file matches even
    when the class lives elsewhere today (numpy.core -> numpy._core, _io -> io)."""
    names = sorted(dict.fromkeys(names))
    lines, aliases = [], []
    for n in names:
        line, alias = _import_line(n)
        if line not in lines:
            lines.append(line)
        aliases.append(f'({alias}, "{n}")')
    body = ",\n    ".join(aliases)
    lines.append("import torch")
    lines.append("")
    if context:
        lines.append(f"with torch.serialization.safe_globals([\n    {body},\n]):")
        lines.append("    checkpoint = torch.load(path, weights_only=True)")
    else:
        lines.append(f"SAFE_GLOBALS = [\n    {body},\n]")
        lines.append("torch.serialization.add_safe_globals(SAFE_GLOBALS)")
    return "\n".join(lines)


def merged_document(existing: dict[str, Any] | None, entries: dict[str, dict[str, Any]]
                    ) -> dict[str, Any]:
    files = dict((existing or {}).get("files", {})) if isinstance(existing, dict) else {}
    files.update(entries)
    union = sorted({n for e in files.values() for n in e.get("allowlist", [])})
    return {"version": 1, "tool": "ckptdoctor repair",
            "note": "objects kept because converting them would break the framework that "
                    "reads them back; load with these names allow-listed "
                    f"(see {SNIPPET_FILE})",
            "allowlist": union, "files": dict(sorted(files.items()))}


def read_document(root: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((root / ALLOWLIST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def render_document(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


def render_module(names: list[str]) -> bytes:
    head = ('"""Written by `ckptdoctor repair`: the classes its kept objects need.\n\n'
            "Import this module (or paste its lines) before resuming; it registers them with\n"
            "torch.serialization.add_safe_globals under the names the checkpoint files use.\n"
            f'See {ALLOWLIST_FILE} for which file needs which name and why."""\n')
    return (head + safe_globals_snippet(names, context=False) + "\n").encode()


__all__ = ["ALLOWLIST_FILE", "SNIPPET_FILE", "safe_globals_snippet", "merged_document",
           "read_document", "render_document", "render_module"]
