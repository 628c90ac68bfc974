"""Register a checkpoint's repair allow-list with torch: a fixed module, never generated.

`ckptdoctor repair` writes the names its kept objects need as data, in
`ckptdoctor-allowlist.json` beside the checkpoint. This module reads such a list and registers
each name with `torch.serialization.add_safe_globals` only after `policy.vet` passes it:
reviewed data names always, names of unknown safety only when the caller passes them in
`allow`, code-executing names never. The JSON is input, not authority: a planted or edited
file can only ever register names ckptdoctor's own rule admits.

    from ckptdoctor.repair.safe_globals import register
    register("checkpoint-500/ckptdoctor-allowlist.json")
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Any

from ..pickles.policy import AllowListError, require


def names_in(doc: Any) -> list[str]:
    """The `allowlist` names of a ckptdoctor-allowlist.json document (strings only)."""
    names = doc.get("allowlist", []) if isinstance(doc, dict) else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AllowListError("allow-list file: 'allowlist' must be a list of names", [])
    return list(dict.fromkeys(names))


def read(path: str | os.PathLike, allow: Collection[str] = ()) -> list[str]:
    """The vetted names of an allow-list file; AllowListError when any name fails vet."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    return require(names_in(doc), allow)


def register(path: str | os.PathLike, allow: Collection[str] = ()) -> list[tuple[Any, str]]:
    """Register the file's vetted names with torch.serialization.add_safe_globals (real
    classes, or stand-ins where a module is not installed); returns what was registered."""
    import torch

    from ..standins import resolve_allowlist

    entries = resolve_allowlist(read(path, allow), user_vouched=tuple(allow))
    torch.serialization.add_safe_globals(list(entries))
    return entries


__all__ = ["names_in", "read", "register"]
