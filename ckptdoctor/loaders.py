"""The loader chain: try the safest way to load a checkpoint first, record every attempt.

  weights_only  torch.load(weights_only=True), mmap for torch zips
  allowlist     the same inside torch.serialization.safe_globals(the file's names that pass
                policy.vet: reviewed data names, and names the user vouched for with --allow),
                real objects or stand-ins (see standins.py)
  trusted       only with trust=True: torch.load(weights_only=False, pickle_module=<a module
                whose Unpickler resolves only names that pass policy.vet>). torch's own storage
                handling is kept; the unpickler is never unrestricted. --trust alone admits no
                unknown name: the refusal lists them with the exact --allow flags.

Every strategy refuses a file whose FileInfo is not `loadable` (scan not complete, or a
code-executing global). Each load runs sandboxed: any BaseException (SystemExit and
KeyboardInterrupt raised by a payload included) becomes a failed attempt, and stdin reads as
/dev/null while it runs.

`safe_load(path)` is what a training script calls instead of torch.load; `allow_for(path)`
registers a file's vetted data-only allow-list for torch.load calls made inside it. torch is
imported inside functions only, so importing this module stays cheap."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .codes import Code
from .diagnose import diagnose, key_line
from .errors import LoadError
from .model import FileInfo, Finding, FormatName, GlobalClass, ScanState
from .pickles.policy import AllowListError, NotVouchedError, Verdict, require, vet
from .pickles.unpickler import RefusedGlobal, vetted_pickle_module
from .standins import is_standin, refuse_dangerous, resolve_allowlist

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


@dataclass
class LoadContext:
    allow: tuple[str, ...]
    trust: bool
    map_location: Any
    mmap: bool
    static: FileInfo | None
    stat: os.stat_result
    load_args: dict[str, Any] = field(default_factory=dict)  # torch.load's **pickle_load_args


class Strategy(Protocol):
    name: str

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt: ...


def _timed(name: str, run: Callable[[], Any], **extra: Any) -> Attempt:
    """Run `run()` (returns the loaded object) into an Attempt; exceptions become failures."""
    start = time.perf_counter()
    try:
        with sandboxed():
            obj = run()
    except BaseException as exc:  # SystemExit from a payload is data here too
        return Attempt(name, "failed", type(exc).__name__, key_line(exc) or type(exc).__name__,
                       time.perf_counter() - start, **extra)
    return Attempt(name, "loaded", seconds=time.perf_counter() - start, obj=obj, **extra)


@contextlib.contextmanager
def sandboxed() -> Iterator[None]:
    """stdin is /dev/null (sys.stdin and file descriptor 0) while a load runs: nothing a file
    triggers can block on a terminal or read what a pipe feeds the process."""
    saved_obj = sys.stdin
    saved_fd = None
    devnull = open(os.devnull)  # noqa: SIM115 - closed below
    try:
        try:
            saved_fd = os.dup(0)
            os.dup2(devnull.fileno(), 0)
        except OSError:
            saved_fd = None
        sys.stdin = devnull
        yield
    finally:
        sys.stdin = saved_obj
        if saved_fd is not None:
            os.dup2(saved_fd, 0)
            os.close(saved_fd)
        devnull.close()


def _torch_load(path: Path, ctx: LoadContext, weights_only: bool,
                pickle_module: Any = None) -> Any:
    import torch

    fmt = ctx.static.format if ctx.static else FormatName.UNKNOWN
    mmap = ctx.mmap and fmt in ("torch-zip", "unknown")
    kw: dict[str, Any] = dict(ctx.load_args)
    if not weights_only:
        if pickle_module is None:  # never an unrestricted unpickler
            raise RuntimeError("internal: weights_only=False needs the vetted pickle module")
        kw["pickle_module"] = pickle_module
    if path.name.endswith(".safetensors"):
        # torch >= 2.13 sends *paths* ending in .safetensors to safetensors; this one is not
        with open(path, "rb") as fh:
            return torch.load(fh, map_location=ctx.map_location, weights_only=weights_only,
                              **kw)
    try:
        return torch.load(path, map_location=ctx.map_location, weights_only=weights_only,
                          mmap=mmap, **kw)
    except RuntimeError as exc:
        if not (mmap and "mmap can only be used with files saved with" in str(exc)):
            raise
    return torch.load(path, map_location=ctx.map_location, weights_only=weights_only,
                      mmap=False, **kw)


class WeightsOnly:
    name = "weights_only"

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt:
        refusal = _not_loadable(ctx.static)
        if refusal:
            return Attempt(self.name, "refused", "Refused", refusal)
        return _timed(self.name, lambda: _torch_load(path, ctx, weights_only=True))


class AllowList:
    name = "allowlist"

    def attempt(self, path: Path, ctx: LoadContext) -> Attempt:
        names = allowlist_names(ctx.static, ctx.allow)
        refusal = _not_loadable(ctx.static)
        if refusal:
            return Attempt(self.name, "refused", "Refused", refusal, allowlist=names)
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
        names = _file_names(ctx.static)
        try:
            require(names, ctx.allow)
        except AllowListError as exc:
            return Attempt(self.name, "refused", type(exc).__name__, str(exc))
        module = vetted_pickle_module(ctx.allow)
        return _timed(self.name, lambda: _torch_load(path, ctx, weights_only=False,
                                                     pickle_module=module))


def _file_names(static: FileInfo | None) -> list[str]:
    if static is None:
        return []
    names = [g.name for g in static.globals]
    if static.weights_only is not None:
        names += static.weights_only.allowlist
    return list(dict.fromkeys(names))


def _not_loadable(static: FileInfo | None) -> str:
    """Why no strategy may load this file ('' when it may): the shared fail-closed rule."""
    if static is None:
        return "the file was not scanned, so nothing vouches it runs no code"
    if static.dangerous:
        return ("file references code-executing global(s): "
                + ", ".join(sorted({g.name for g in static.dangerous})))
    if static.scan_state is not ScanState.COMPLETE:
        return (f"the static scan is {static.scan_state.value}: nothing vouches for the whole "
                "file, so it is not loaded")
    bad = [f.message for f in static.findings if f.code in _SCAN_INCOMPLETE]
    if bad:
        return "static scan incomplete: " + bad[0]
    return ""


def _trust_refusal(path: Path, ctx: LoadContext) -> str:
    static = ctx.static
    reason = _not_loadable(static)
    if reason or static is None:  # _not_loadable refuses an unscanned file
        return reason
    if static.weights_only is None and static.format not in (FormatName.SAFETENSORS,):
        return "the file's pickle could not be scanned, so nothing vouches it runs no code"
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
    return [n for n in dict.fromkeys(names) if vet(n, allow).verdict is not Verdict.TORCH]


def _load_safetensors(path: Path, ctx: LoadContext) -> Attempt:
    """No pickle, no strategies: safetensors holds tensors only."""
    import torch
    from safetensors.torch import load_file

    # safetensors takes a device string; a dict or callable map_location means CPU here
    loc = ctx.map_location
    device = str(loc) if isinstance(loc, (str, torch.device)) else "cpu"
    return _timed("safetensors", lambda: load_file(path, device=device))


def _is_safetensors(path: Path, static: FileInfo | None) -> bool:
    if static is not None and static.format == FormatName.SAFETENSORS:
        return True
    unknown = static is None or static.format in (FormatName.UNKNOWN, FormatName.EMPTY)
    return unknown and path.suffix == ".safetensors"


def load_with_chain(path: str | os.PathLike[str], allow: tuple[str, ...] | list[str] = (),
                    trust: bool = False, map_location: Any = "cpu", mmap: bool = True, *,
                    static: FileInfo | None = None, rel: str | None = None,
                    layout: str | None = None,
                    strategies: tuple[Strategy, ...] = STRATEGIES,
                    load_args: dict[str, Any] | None = None) -> LoadResult:
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
    ctx = LoadContext(allow, trust, map_location, mmap, static, stat, dict(load_args or {}))
    attempts: list[Attempt] = []
    refusal = _not_loadable(static)
    if refusal:
        # Not loadable (a code-executing global, or a scan that is not complete): no strategy
        # is even tried, torch never sees the file.
        attempts.append(Attempt("static", "refused", "Refused", refusal))
        dangerous = [f for f in static.findings if f.code == Code.DANGEROUS_GLOBAL.code]
        if not dangerous and not static.dangerous:
            dangerous = [Code.LOAD_FAILS.finding(
                rel, f"not loaded: {refusal}", "do not load this file; restore it from a "
                "trusted source", scan_state=static.scan_state.value)]
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
    if winner.strategy in ("weights_only", "allowlist"):
        from .pickles.policy import weights_only_caveats

        findings += [Code.TORCH_WEIGHTS_ONLY_CVE.finding(rel, sentence, cve=cve)
                     for cve, sentence in weights_only_caveats()]
    return LoadResult(winner.obj, winner.strategy, attempts, findings, static)


def _cause(attempts: list[Attempt]) -> Attempt:
    """The attempt that explains a total failure best: a refused trusted attempt (it names
    the --allow flags) or the last non-trusted one that ran or was refused (an allow-list
    failure names what is still missing)."""
    for a in attempts:
        if a.strategy == "trusted" and a.outcome == "refused" and \
                a.error_type == NotVouchedError.__name__:
            return a
    tried = [a for a in attempts if a.outcome in ("failed", "refused") and a.strategy != "trusted"]
    return tried[-1] if tried else attempts[0]


def safe_load(f: Any, map_location: Any = "cpu", pickle_module: Any = None, *,
              weights_only: bool | None = None, mmap: bool | None = None,
              allow: tuple[str, ...] | list[str] = (), trust: bool = False,
              **pickle_load_args: Any) -> Any:
    """Drop-in for torch.load(f, map_location, weights_only=..., mmap=..., **pickle_load_args):
    the loaded object, or LoadError (a pickle.UnpicklingError) saying why and what to do.

    `f`: a path or a readable binary file object (BytesIO...; read into a private temporary
    file, which is scanned like any other). weights_only=True (or None) is accepted; False
    only together with trust=True, and still never admits a name that fails policy.vet.
    `pickle_module` must be None: ckptdoctor chooses the unpickler."""
    if pickle_module is not None:
        raise TypeError("safe_load chooses its own (vetted) unpickler; pickle_module must be "
                        "None")
    if weights_only is False and not trust:
        raise LoadError(str(getattr(f, "name", f)), [Attempt(
            "trusted", "refused", "Refused", "weights_only=False needs trust=True")], [
            Code.LOAD_FAILS.finding(str(getattr(f, "name", f)), "weights_only=False refused: "
                                    "pass trust=True (names must still pass ckptdoctor's "
                                    "allow-list rule)")])
    if isinstance(f, (str, os.PathLike)):
        return load_with_chain(f, allow, trust, map_location,
                               True if mmap is None else mmap, load_args=pickle_load_args).obj
    if not hasattr(f, "read"):
        raise TypeError(f"safe_load takes a path or a binary file object, not {type(f).__name__}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ckptdoctor-load-") as tmp:
        name = os.path.basename(str(getattr(f, "name", "") or "")) or "stream.pt"
        target = Path(tmp) / (name if not name.endswith(".safetensors") else name + ".pt")
        with open(target, "wb") as out:
            while block := f.read(8 << 20):
                out.write(block)
        return load_with_chain(target, allow, trust, map_location, False,
                               rel=str(getattr(f, "name", "<stream>")),
                               load_args=pickle_load_args).obj


@contextlib.contextmanager
def allow_for(path: str | os.PathLike[str], allow: tuple[str, ...] | list[str] = ()
              ) -> Iterator[list[str]]:
    """Inside this block, torch.load(..., weights_only=True) also accepts the data-only
    allow-list ckptdoctor computes for `path` (a file or a checkpoint directory): every name
    its scan lists that passes policy.vet (reviewed data names, and `allow`). Nothing is
    registered for a file that is not loadable (LoadError). What the block registers is
    removed on exit; a caller's own registrations stay.

        with ckptdoctor.allow_for(ckpt):
            trainer.train(resume_from_checkpoint=ckpt)"""
    import torch

    names = _allow_for_names(Path(path), tuple(allow))
    entries = resolve_allowlist(names, user_vouched=tuple(allow)) if names else []
    present = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([e for e in entries if e not in present]):
        yield names


def _allow_for_names(path: Path, allow: tuple[str, ...]) -> list[str]:
    from .formats import detect_file

    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and ".ckptdoctor-backup" not in p.parts)
    names: list[str] = []
    for p in files:
        info = detect_file(p, str(p))
        if info.weights_only is None:
            continue
        refusal = _not_loadable(info)
        if refusal:
            raise LoadError(str(p), [Attempt("static", "refused", "Refused", refusal)],
                            [Code.LOAD_FAILS.finding(str(p), f"not allow-listed: {refusal}")])
        names += [n for n in allowlist_names(info) if vet(n, allow).allowed]
    return list(dict.fromkeys(names))


# --- static scan ------------------------------------------------------------------------------
def _static_scan(path: Path, rel: str) -> FileInfo:
    from .formats import detect_file

    return detect_file(path, rel)


__all__ = ["Attempt", "LoadResult", "LoadError", "LoadContext", "Strategy", "STRATEGIES",
           "WeightsOnly", "AllowList", "Trusted", "load_with_chain", "safe_load", "allow_for",
           "allowlist_names", "vetted_pickle_module", "sandboxed", "RefusedGlobal"]
