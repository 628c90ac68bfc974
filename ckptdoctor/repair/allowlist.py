"""The allow-list written next to a checkpoint whose kept objects need one.

    ckptdoctor-allowlist.json   {"version": 1, "allowlist": [...], "files": {rel: {"allowlist",
                                 "sha256", "why"}}}: machine-readable, merged across runs
    ckptdoctor_safe_globals.py  `import ckptdoctor_safe_globals` before resuming: fixed text,
                                 the same bytes for every checkpoint (never generated from
                                 names); it calls ckptdoctor.repair.safe_globals.register on
                                 the JSON beside it, which vets every name again

Every name written passed policy.vet. An existing ckptdoctor-allowlist.json is never authority:
its entries are kept only when their path is a plain relative path to a file whose sha256 still
matches and every name passes vet again (`revetted_entries`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..pickles.policy import vet
from .backup import safe_rel

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


def safe_globals_snippet(names: list[str], context: bool = True,
                         allow: tuple[str, ...] = ()) -> str:
    """Ready-to-paste code for the names that pass policy.vet (others are left out). Tuples
    with the dotted name, so the name in the file matches even when the class lives elsewhere
    today (numpy.core -> numpy._core, _io -> io)."""
    names = sorted(n for n in dict.fromkeys(names) if vet(n, allow).allowed)
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
    """The document to write: `existing` entries (already re-vetted, see revetted_entries)
    and this run's `entries`; the union keeps only names that pass vet."""
    files = dict(existing or {})
    files.update(entries)
    allow = {n for e in entries.values() for n in e.get("allowlist", [])}
    union = sorted({n for e in files.values() for n in e.get("allowlist", [])
                    if vet(n, allow).allowed})
    return {"version": 1, "tool": "ckptdoctor repair",
            "note": "objects kept because converting them would break the framework that "
                    "reads them back; load with these names allow-listed "
                    f"(see {SNIPPET_FILE})",
            "allowlist": union, "files": dict(sorted(files.items()))}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def revetted_entries(root: Path, allow: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Entries of an existing ckptdoctor-allowlist.json that still hold: plain relative path
    to an existing file whose sha256 matches, every name passing vet(name, allow). Everything
    else in the file is ignored (it is input, never authority)."""
    try:
        doc = json.loads((root / ALLOWLIST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for rel, entry in files.items():
        target = safe_rel(root, rel)
        if target is None or not isinstance(entry, dict) or not target.is_file():
            continue
        names = entry.get("allowlist")
        if not isinstance(names, list) or not all(isinstance(n, str) and vet(n, allow).allowed
                                                  for n in names):
            continue
        if entry.get("sha256") != _sha256(target):
            continue
        why = entry.get("why")
        if not isinstance(why, dict):
            why = {}
        out[rel] = {"allowlist": sorted(names), "sha256": entry["sha256"],
                    "why": {str(k): str(v) for k, v in why.items() if k in names}}
    return out


def render_document(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


MODULE_TEXT = f'''"""Written by `ckptdoctor repair`; the same text beside every checkpoint.

`import ckptdoctor_safe_globals` (with this directory on sys.path) before resuming: it
registers the names listed in {ALLOWLIST_FILE} with torch.serialization.add_safe_globals,
after ckptdoctor vets each one again (reviewed data names only; pass others yourself with
ckptdoctor.repair.safe_globals.register(path, allow=[...]))."""

from pathlib import Path

from ckptdoctor.repair.safe_globals import register

SAFE_GLOBALS = register(Path(__file__).with_name("{ALLOWLIST_FILE}"))
'''


def render_module(names: list[str] | None = None) -> bytes:
    """The fixed module text (`names` is ignored: the module reads the JSON beside it)."""
    return MODULE_TEXT.encode()


__all__ = ["ALLOWLIST_FILE", "SNIPPET_FILE", "safe_globals_snippet", "merged_document",
           "revetted_entries", "safe_rel", "render_document", "render_module", "MODULE_TEXT"]
