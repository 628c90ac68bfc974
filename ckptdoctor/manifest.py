"""The integrity manifest `validate --write-manifest` records and every later `validate` checks.

Written in the OpenSSF model-signing (OMS) format: an in-toto Statement v1 whose predicate
(`https://model_signing/signature/v1.0`) lists one resource descriptor {name, algorithm, digest}
per file, sorted by name, and whose single subject digest is sha256 over the concatenated raw
resource digests in that order. `model_signing` can sign this statement's content (it computes
the same manifest from the directory) and verify it. Manifests of the older ckptdoctor format
(`{"version": 1, "files": {rel: {size, sha256}}}`) are still read."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_bytes
from .storage import AnyPath

MANIFEST = ".ckptdoctor-manifest.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
IGNORE_PATHS = [MANIFEST, ".ckptdoctor-backup"]


@dataclass(frozen=True)
class Entry:
    sha256: str
    size: int | None = None  # only the old format records sizes


def statement(model_name: str, digests: dict[str, str]) -> dict:
    """The OMS in-toto statement for {posix relative path: sha256 hex}."""
    root = hashlib.sha256()
    resources = []
    for name in sorted(digests):
        root.update(bytes.fromhex(digests[name]))
        resources.append({"name": name, "algorithm": "sha256", "digest": digests[name]})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root.hexdigest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": True,
                              "ignore_paths": IGNORE_PATHS},
            "resources": resources,
        },
    }


def write(root: Path, digests: dict[str, str]) -> Path:
    doc = statement(root.resolve().name, digests)
    path = root / MANIFEST
    write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def read(path: AnyPath) -> dict[str, Entry]:
    """{rel: Entry} from either format. Raises ValueError when it does not parse or is
    inconsistent (an OMS subject digest that does not match its resources)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("_type") == STATEMENT_TYPE:
        if doc.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"unknown predicate type {doc.get('predicateType')!r}")
        out: dict[str, Entry] = {}
        root = hashlib.sha256()
        for r in doc["predicate"]["resources"]:
            if r.get("algorithm") != "sha256":
                raise ValueError(f"unsupported algorithm {r.get('algorithm')!r}")
            root.update(bytes.fromhex(r["digest"]))
            out[str(r["name"])] = Entry(str(r["digest"]))
        subjects = doc.get("subject") or []
        if len(subjects) != 1 or subjects[0]["digest"]["sha256"] != root.hexdigest():
            raise ValueError("subject digest does not match the resources")
        return out
    files = doc["files"]
    if not isinstance(files, dict):
        raise ValueError("files is not an object")
    return {str(k): Entry(str(v.get("sha256")), v.get("size")) for k, v in files.items()}


def replaced(path: Path, old_rel: str, old_sha: str, new_rel: str, new_sha: str,
             new_size: int) -> bytes | None:
    """The manifest document after `old_rel` (recorded with `old_sha`) was replaced by a
    verified `new_rel`, in the format it was written in; None when it does not record it."""
    try:
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("_type") == STATEMENT_TYPE:
            digests = {str(r["name"]): str(r["digest"]) for r in doc["predicate"]["resources"]}
        else:
            digests = {k: v.get("sha256") for k, v in doc["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if digests.get(old_rel) != old_sha:
        return None
    if doc.get("_type") == STATEMENT_TYPE:
        digests.pop(old_rel)
        digests[new_rel] = new_sha
        new = statement(doc["subject"][0]["name"], digests)
        new["predicate"]["serialization"] = doc["predicate"].get("serialization",
                                                                 new["predicate"]["serialization"])
        return (json.dumps(new, indent=2) + "\n").encode()
    files = doc["files"]
    files.pop(old_rel)
    files[new_rel] = {"size": new_size, "sha256": new_sha}
    doc["files"] = dict(sorted(files.items()))
    return json.dumps(doc, indent=1, sort_keys=True).encode()
