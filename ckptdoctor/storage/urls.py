"""URLs and storage options as the user gives them: which strings are URLs, which extra
provides a protocol, a URL safe to print, `--storage-option key=value` parsing, and the option
values that must never be printed."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..codes import Code
from .errors import StorageError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# the extra that provides each protocol's fsspec filesystem (pyproject.toml [project.optional-
# dependencies]); a protocol not named here is fsspec's own (memory, file, ...)
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hf", "http": "http",
          "https": "http"}


def is_url(path: Any) -> bool:
    return isinstance(path, str) and bool(SCHEME.match(path))


def redact(url: str) -> str:
    """A URL safe to print: no user:password@, no query (presigned signatures live there)."""
    url = url.split("?", 1)[0].split("#", 1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1", url)


def parse_options(specs: Iterable[str]) -> dict[str, Any]:
    """`--storage-option key=value` (repeatable) -> fsspec storage options. Values that read as
    JSON (numbers, true/false, objects) are parsed; dotted keys nest (client_kwargs.region_name)."""
    import json

    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise StorageError(Code.STORAGE_OPTION, f"--storage-option {spec.split('=')[0]!r} "
                               "is not key=value")
        try:
            val: Any = json.loads(value)
        except ValueError:
            val = value
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StorageError(Code.STORAGE_OPTION, f"--storage-option {key}: conflicting keys")
        node[parts[-1]] = val
    return out


def secrets_in(options: dict[str, Any]) -> tuple[str, ...]:
    """The option values never printed: every string of 4+ characters (keys, tokens)."""
    out: list[str] = []
    for v in options.values():
        if isinstance(v, dict):
            out.extend(secrets_in(v))
        elif isinstance(v, str) and len(v) >= 4:
            out.append(v)
    return tuple(out)
