"""The loader chain: try the safest way to load a checkpoint first, record every attempt.

  weights_only  torch.load(weights_only=True), mmap for torch zips
  allowlist     the same inside torch.serialization.safe_globals(the file's complete static
                allow-list + --allow names), real objects or stand-ins (see standins.py)
  trusted       torch.load(weights_only=False): only with trust=True, and refused even then
                when the static scan finds a code-executing global, is malformed or incomplete,
                or the file changed since it was scanned

`safe_load(path)` is what a training script calls instead of torch.load. torch is imported
inside functions only, so importing this module stays cheap."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .codes import Code
from .diagnose import diagnose, key_line
from .model import FileInfo, Finding, GlobalClass
from .pickles.policy import classify
from .standins import AllowListError, refuse_dangerous, is_standin, resolve_allowlist

# Findings that mean the static scan could not vouch for the whole pickle.
_SCAN_INCOMPLETE = frozenset({Code.PICKLE_MALFORMED.code, Code.PICKLE_LIMIT.code,
                              Code.DYNAMIC_GLOBAL.code})


@dataclass
class Attempt:
    """One strategy's try. `outcome`: loaded, failed, refused (ckptdoctor would not run it),
    skipped (nothing to do, e.g. trusted without trust)."""

    strategy: str
    outcome: str
    error_type: str = ""
    error: str = ""  # the informative line of the message
    seconds: float = 0.0
    allowlist: list[str] = field(default_factory=list)
    standins: list[str] = field(default_factory=list)  # allow-listed names loaded as stand-ins
    obj: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.outcome == "loaded"

    def to_json(self) -> dict[str, Any]:
        out = {"strategy": self.strategy, "ok": self.ok, "outcome": self.outcome,
               "seconds": round(self.seconds, 4)}
        if self.error_type:
            out["error_type"] = self.error_type
        if self.error:
            out["error"] = self.error
        if self.allowlist:
            out["allowlist"] = self.allowlist
        if self.standins:
            out["standins"] = self.standins
        return out


@dataclass
class LoadResult:
    obj: Any
    strategy: str  # the winner
    attempts: list[Attempt]
    findings: list[Finding] = field(default_factory=list)  # e.g. CK602 when it needed a list
    static: FileInfo | None = None


class LoadError(Exception):
    """Every strategy failed or was refused."""

    def __init__(self, path: str, attempts: list[Attempt], findings: list[Finding]):
        self.path = path
        self.attempts = attempts
        self.findings = findings
        reason = findings[0].message if findings else "no strategy loaded it"
        super().__init__(f"cannot load {path}: {reason}")


@dataclass
class LoadContext:
    allow: tuple[str, ...]
    trust: bool
    map_location: Any
    mmap: bool
    static: FileInfo | None
    stat: os.stat_result


class Strategy(Protocol):
    name: str

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt: ...


def _timed(name: str, run, **extra) -> Attempt:
    """Run `run()` (returns the loaded object) into an Attempt; exceptions become failures."""
    start = time.perf_counter()
    try:
        obj = run()
    except Exception as exc:  # noqa: BLE001 - every failure is data here
        return Attempt(name, "failed", type(exc).__name__, key_line(exc),
                       time.perf_counter() - start, **extra)
    return Attempt(name, "loaded", seconds=time.perf_counter() - start, obj=obj, **extra)


def _torch_load(path: Path, ctx: LoadContext, weights_only: bool) -> Any:
    import torch

    fmt = ctx.static.format if ctx.static else "unknown"
    mmap = ctx.mmap and fmt in ("torch-zip", "unknown")
    if path.name.endswith(".safetensors"):
        # torch >= 2.13 sends *paths* ending in .safetensors to safetensors; this one is not
        with open(path, "rb") as fh:
            return torch.load(fh, map_location=ctx.map_location, weights_only=weights_only)
    try:
        return torch.load(path, map_location=ctx.map_location, weights_only=weights_only,
                          mmap=mmap)
    except RuntimeError as exc:
        if not (mmap and "mmap can only be used with files saved with" in str(exc)):
            raise
    return torch.load(path, map_location=ctx.map_location, weights_only=weights_only,
                      mmap=False)


class WeightsOnly:
    name = "weights_only"

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt:
        return _timed(self.name, lambda: _torch_load(path, ctx, weights_only=True))


class AllowList:
    name = "allowlist"

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt:
        names = allowlist_names(ctx.static, ctx.allow)
        dangerous = sorted({g.name for g in ctx.static.dangerous}) if ctx.static else []
        if dangerous:
            return Attempt(self.name, "refused", "DangerousGlobalError",
                           "file references code-executing global(s): " + ", ".join(dangerous),
                           allowlist=names)
        if not names:
            return Attempt(self.name, "skipped", error="nothing to allow-list")
        try:
            entries = resolve_allowlist(names, user_vouched=ctx.allow)
        except AllowListError as exc:
            return Attempt(self.name, "refused", type(exc).__name__, str(exc), allowlist=names)
        standins = [name for obj, name in entries if is_standin(obj)]
        return _timed(self.name, lambda: _load_with_globals(path, ctx, entries),
                      allowlist=names, standins=standins)


def _load_with_globals(path: Path, ctx: LoadContext, entries: list[tuple[Any, str]]) -> Any:
    import torch

    # Register only what is not registered yet: leaving the context removes what it added,
    # and must not remove a caller's own add_safe_globals entries.
    present = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([e for e in entries if e not in present]):
        return _torch_load(path, ctx, weights_only=True)


class Trusted:
    name = "trusted"

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt:
        if not ctx.trust:
            return Attempt(self.name, "skipped", error="not trusted (pass trust=True / --trust)")
        reason = _trust_refusal(path, ctx)
        if reason:
            return Attempt(self.name, "refused", "Refused", reason)
        return _timed(self.name, lambda: _torch_load(path, ctx, weights_only=False))


def _trust_refusal(path: Path, ctx: LoadContext) -> str:
    static = ctx.static
    if static is None or static.weights_only is None:
        return "the file's pickle could not be scanned, so nothing vouches it runs no code"
    if static.dangerous:
        return ("file references code-executing global(s): "
                + ", ".join(sorted({g.name for g in static.dangerous})))
    bad = [f.message for f in static.findings if f.code in _SCAN_INCOMPLETE]
    if bad:
        return "static scan incomplete: " + bad[0]
    now = path.stat()
    if (now.st_size, now.st_mtime_ns, now.st_ino) != (
            ctx.stat.st_size, ctx.stat.st_mtime_ns, ctx.stat.st_ino):
        return "file changed since it was scanned"
    return ""


STRATEGIES: tuple[Strategy, ...] = (WeightsOnly(), AllowList(), Trusted())


def allowlist_names(static: FileInfo | None, allow: tuple[str, ...] = ()) -> list[str]:
    """The file's complete static allow-list, the DATA globals it references and --allow."""
    names: list[str] = []
    if static is not None:
        if static.weights_only is not None:
            names += static.weights_only.allowlist
        names += [g.match_name or g.name for g in static.globals
                  if g.klass is GlobalClass.DATA]
    names += allow
    return [n for n in dict.fromkeys(names) if classify(n) is not GlobalClass.TORCH_ALLOWED]


def _load_safetensors(path: Path, ctx: LoadContext) -> Attempt:
    """No pickle, no strategies: safetensors holds tensors only."""
    import torch
    from safetensors.torch import load_file

    # safetensors takes a device string; a dict or callable map_location means CPU here
    loc = ctx.map_location
    device = str(loc) if isinstance(loc, (str, torch.device)) else "cpu"
    return _timed("safetensors", lambda: load_file(path, device=device))


def _is_safetensors(path: Path, static: FileInfo | None) -> bool:
    if static is not None and static.format == "safetensors":
        return True
    unknown = static is None or static.format in ("unknown", "empty")
    return unknown and path.suffix == ".safetensors"


def load_with_chain(path: str | os.PathLike, allow: tuple[str, ...] | list[str] = (),
                    trust: bool = False, map_location: Any = "cpu", mmap: bool = True, *,
                    static: FileInfo | None = None, rel: str | None = None,
                    layout: str | None = None,
                    strategies: tuple[Strategy, ...] = STRATEGIES) -> LoadResult:
    """Load `path` with the first strategy that works. Raises LoadError (with every attempt
    and a diagnosis) when none does, and AllowListError at once when `allow` names a
    code-executing global. `static` skips the scan when the caller already has the FileInfo;
    `rel` is the path findings report (default: `path` as given)."""
    path = Path(path)
    rel = str(path) if rel is None else rel
    allow = tuple(dict.fromkeys(allow))
    refuse_dangerous(list(allow))
    stat = path.stat()
    if static is None:
        static = _static_scan(path, rel)
    ctx = LoadContext(allow, trust, map_location, mmap, static, stat)
    attempts: list[Attempt] = []
    if static is not None and static.dangerous:
        # A code-executing global: no strategy is even tried, torch never sees the file.
        attempts.append(Attempt("static", "refused", "Refused", _trust_refusal(path, ctx)))
        dangerous = [f for f in static.findings if f.code == Code.DANGEROUS_GLOBAL.code]
        raise LoadError(rel, attempts, dangerous or [diagnose(rel, attempts[0], static, layout)])
    if _is_safetensors(path, static):
        attempts.append(_load_safetensors(path, ctx))
    else:
        for strategy in strategies:
            attempts.append(strategy.attempt(path, ctx))
            if attempts[-1].ok:
                break
    winner = attempts[-1] if attempts[-1].ok else None
    if winner is None:
        raise LoadError(rel, attempts, [diagnose(rel, _cause(attempts), static, layout)])
    findings = [] if winner is attempts[0] else [diagnose(rel, attempts[0], static, layout)]
    return LoadResult(winner.obj, winner.strategy, attempts, findings, static)


def _cause(attempts: list[Attempt]) -> Attempt:
    """The attempt that explains a total failure best: the last non-trusted one that ran or
    was refused (an allow-list failure names what is still missing)."""
    tried = [a for a in attempts if a.outcome in ("failed", "refused") and a.strategy != "trusted"]
    return tried[-1] if tried else attempts[0]


def safe_load(path: str | os.PathLike, allow: tuple[str, ...] | list[str] = (),
              trust: bool = False, map_location: Any = "cpu", mmap: bool = True) -> Any:
    """Drop-in for torch.load: the loaded object, or LoadError saying why and what to do."""
    return load_with_chain(path, allow, trust, map_location, mmap).obj


# --- static scan ------------------------------------------------------------------------------
def _static_scan(path: Path, rel: str) -> FileInfo:
    from .formats import detect_file

    return detect_file(path, rel)


__all__ = ["Attempt", "LoadResult", "LoadError", "LoadContext", "Strategy", "STRATEGIES",
           "WeightsOnly", "AllowList", "Trusted", "load_with_chain", "safe_load",
           "allowlist_names"]
