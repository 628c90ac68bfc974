"""The one entry point: `as_path` turns the user's PATH into a local `Path` (a plain path or a
`file://` URL: no fsspec at all) or a `RemotePath` on a fresh per-run `Session`
(`open_session`: the protocol checked, its extra present, fsspec's instance and listing caches
off, and every request counted where the transport sends it: botocore / aiohttp hooks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..codes import Code
from .errors import StorageError
from .remote_path import RemotePath
from .session import DEFAULT_TIMEOUT, Session
from .urls import EXTRAS, SCHEME, is_url, redact, secrets_in


def open_session(url: str, options: dict[str, Any] | None = None, *,
                 timeout: float | None = None, max_bytes: int | None = None
                 ) -> tuple[Session, str]:
    """(Session, fs-native path) for a URL; StorageError (CK010/CK011/CK014) when the
    protocol is unknown, its extra is missing or the filesystem cannot be set up."""
    options = dict(options or {})
    m = SCHEME.match(url)
    proto = m.group(1).lower() if m else ""
    try:
        import fsspec
        from fsspec.core import url_to_fs
        from fsspec.registry import known_implementations
    except ImportError:  # pragma: no cover - fsspec is a core dependency
        raise StorageError(Code.REMOTE_EXTRA, "URLs need fsspec: pip install fsspec") from None
    if proto not in known_implementations and proto not in fsspec.available_protocols():
        raise StorageError(Code.REMOTE_URL, f"{proto}:// is not a storage protocol fsspec "
                           "knows (s3, gs, hf, http, https, file, ...)")
    if proto in ("http", "https"):
        import aiohttp  # checked here so a missing extra is one line

    extra = EXTRAS.get(proto)
    # a fresh filesystem per run: fsspec caches instances and their listings, and a stale
    # listing would pin reads to an old ETag
    options.setdefault("skip_instance_cache", True)
    if proto in ("s3", "s3a", "http", "https", "gs", "gcs"):
        options.setdefault("use_listings_cache", False)
    hook = _Hook()
    if proto in ("http", "https"):
        import aiohttp  # checked here so a missing extra is one line

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(hook.aiohttp)
        trace.on_request_redirect.append(hook.aiohttp)  # a followed redirect: one more request
        ck = dict(options.get("client_kwargs") or {})
        ck["trace_configs"] = list(ck.get("trace_configs") or []) + [trace]
        options["client_kwargs"] = ck
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError:
        raise StorageError(Code.REMOTE_EXTRA, f"{proto}:// needs the {extra or 'remote'} extra: "
                           f"pip install 'ckptdoctor[{extra or 'remote'}]'") from None
    except (TypeError, ValueError) as exc:
        raise StorageError(Code.STORAGE_OPTION, redact(f"cannot set up {proto}://: {exc}")) \
            from None
    session = Session(fs, proto, timeout=timeout or DEFAULT_TIMEOUT, max_bytes=max_bytes,
                      secrets=secrets_in(options))
    hook.session = session
    if proto in ("http", "https"):
        session.transport = True
    elif proto in ("s3", "s3a"):
        session.transport = _hook_s3(session, hook)
    if proto in ("http", "https"):
        path = url.split("?", 1)[0] if "?" not in url else url
    return session, path


class _Hook:
    """Counts requests where the transport sends them (botocore / aiohttp events)."""

    session: Session | None = None

    def botocore(self, **_kw) -> None:
        if self.session is not None:
            self.session.sent()

    async def aiohttp(self, *_args) -> None:
        if self.session is not None:
            self.session.sent()


def _hook_s3(session: Session, hook: _Hook) -> bool:
    """Register a before-send handler on s3fs's botocore client (every request, retries
    included). False when the client cannot be reached (then ckptdoctor counts its calls)."""
    from fsspec.asyn import sync

    try:
        sync(session.fs.loop, session.fs.set_session, timeout=session.timeout)
        session.fs.s3.meta.events.register("before-send.s3", hook.botocore)
    except Exception:  # best effort after a failure that is reported anyway
        return False
    return True


def _check_extra(proto: str) -> None:
    extra = EXTRAS.get(proto)
    module = {"s3": "s3fs", "gcs": "gcsfs", "hf": "huggingface_hub", "http": "aiohttp"}.get(
        extra or "")
    if module is None:
        return
    import importlib.util

    try:
        missing = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # sys.modules[module] = None: marked unimportable
        missing = True
    if missing:
        raise StorageError(Code.REMOTE_EXTRA, f"{proto}:// needs the {extra} extra: "
                           f"pip install 'ckptdoctor[{extra}]'")
    too_old = _too_old(module)
    if too_old:
        raise StorageError(Code.REMOTE_EXTRA, f"{proto}:// needs {module}>={MIN_VERSION[module]} "
                           f"(installed: {too_old}): pip install 'ckptdoctor[{extra}]'")


# The async fsspec filesystems (the calendar versions): s3fs before 2021 is the synchronous
# boto3 one pip falls back to when botocore pins clash; it has no event loop to count on.
MIN_VERSION = {"s3fs": "2025.1", "gcsfs": "2025.1"}


def _too_old(module: str) -> str | None:
    """The installed version of `module` when it is below MIN_VERSION (metadata, no import)."""
    from ..layouts.versions import installed_version, parse_version

    floor = MIN_VERSION.get(module)
    have = installed_version(module) if floor else None
    got, want = parse_version(have), parse_version(floor)
    return have if got is not None and want is not None and got < want else None


def as_path(path: str | os.PathLike | RemotePath, options: dict[str, Any] | None = None, *,
            timeout: float | None = None, max_bytes: int | None = None
            ) -> Path | RemotePath:
    """The user's PATH as the readers take it: a local `Path` (a plain path or `file://`), or
    a `RemotePath` on a fresh per-run Session. Raises StorageError (one line, a code)."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, Path) or not is_url(str(path)):
        return Path(path)
    url = str(path)
    proto = SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]
    if proto in ("file", "local") and not options:
        return Path(urlsplit(url).path or "/")
    _check_extra(proto)
    session, native = open_session(url, options, timeout=timeout, max_bytes=max_bytes)
    if proto in ("http", "https") and urlsplit(url).path.endswith("/"):
        # HTTP has no directories: a URL ending in / is one (its page lists the files)
        session.meta[native.rstrip("/")] = {"size": 0, "type": "directory", "etag": None}
    return RemotePath(session, native)
