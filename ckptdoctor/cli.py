"""Thin typer CLI: arguments -> one library call -> a pure renderer -> an exit code.

Exit codes: 0 ok, 1 the checkpoint has findings at or above --fail-on (or a dangerous global),
2 usage error, unusable input path, or internal error. Errors are one line, never a traceback
(set CKPTDOCTOR_DEBUG=1 to see one)."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .codes import Code
from .model import Severity

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Inspect, validate, repair and convert PyTorch / LLM training checkpoints "
                       "without running code from them.")
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"
    junit = "junit"
    sarif = "sarif"
    github = "github"


class ConsumerChoice(str, enum.Enum):
    framework = "framework"
    torch = "torch"


class FailOn(str, enum.Enum):
    error = "error"
    warning = "warning"
    info = "info"


AllowOpt = Annotated[list[str], typer.Option(
    "--allow", metavar="GLOBAL",
    help="Dotted global you vouch for (e.g. numpy.core.multiarray._reconstruct). Repeatable. "
         "Never enables weights_only=False; code-executing globals are refused.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", help="Allow the last loader strategy, torch.load(weights_only=False), for files "
                    "whose static scan finds no code-executing global.")]
ConsumerOpt = Annotated[ConsumerChoice, typer.Option(
    "--consumer", help="Judge files by how the layout's own framework resumes (default) or by "
                       "plain torch.load(weights_only=True).")]


class CliError(Exception):
    """A user-facing failure: one line, a stable code, an exit code."""

    def __init__(self, code: Code, path: str, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.code, self.path, self.exit_code = code, path, exit_code


def _fail(exc: CliError) -> None:
    err.print(f"ckptdoctor: error: {exc.code.code} {exc.path}: {exc}", markup=False)
    raise typer.Exit(exc.exit_code)


def _require(path: Path) -> None:
    if not os.path.lexists(path):
        _fail(CliError(Code.PATH_MISSING, str(path), "no such file or directory"))
    if os.path.islink(path) and not path.exists():
        _fail(CliError(Code.SYMLINK_LOOP, str(path), "dangling symlink or symlink loop"))


def _version(value: bool) -> None:
    if value:
        out.print(f"ckptdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None
          ) -> None:
    """ckptdoctor: a checkpoint doctor for PyTorch and LLM training runs."""


@contextlib.contextmanager
def _progress(enabled: bool):
    """A rich progress bar on stderr when it is a terminal; yields a (label, nbytes) callback."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("reading", total=None)

        def advance(label: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=label[-40:])

        advance.set_total = lambda total: bar.update(task, total=total)  # type: ignore[attr-defined]
        yield advance


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or directory.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document (schema_version 1).")] = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor.")] = False,
) -> None:
    """What is this checkpoint: layout, step, files, tensors, pickled globals, and whether plain
    torch.load(weights_only=True) loads each file. Metadata only; never imports torch."""
    from .inspect import inspect_path
    from .render import inspect_text, to_json

    _require(path)
    report = inspect_path(path)
    if json_out:
        sys.stdout.write(to_json(report, with_tensors=tensors) + "\n")
    else:
        sys.stdout.write(inspect_text(report, tensors, width=out.width, color=out.is_terminal))
    if any(f.code == Code.DANGEROUS_GLOBAL.code for f in report.all_findings()):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or directory.")],
    consumer: ConsumerOpt = ConsumerChoice.framework,
    allow: AllowOpt = [],  # noqa: B006 - typer reads the default
    trust: TrustOpt = False,
    load: Annotated[bool, typer.Option("--load", help="Really load each file through the loader chain.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Read all bytes: zip CRC32s, NaN/Inf, optimizer shapes.")] = False,
    write_manifest: Annotated[bool, typer.Option("--write-manifest", help="Record sha256 of every file as an OpenSSF model-signing (in-toto) manifest; later runs verify it.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=0, help="Files read in parallel by --deep / manifests (0: one per CPU).")] = 0,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="NaN/Inf in parameters or optimizer state is a warning, not an error.")] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.text,
    select: Annotated[list[str], typer.Option("--select", metavar="PREFIX", help="Only codes starting with PREFIX.")] = [],  # noqa: B006
    ignore: Annotated[list[str], typer.Option("--ignore", metavar="PREFIX", help="Drop codes starting with PREFIX.")] = [],  # noqa: B006
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Lowest severity that fails (exit 1).")] = FailOn.error,
) -> None:
    """Pre-resume gate: is the checkpoint complete, intact and loadable by what will resume it?
    Exit 0 resumable, 1 findings at or above --fail-on, 2 usage or internal error."""
    from . import render
    from .dist import from_env
    from .validate import ValidateOptions, exit_code, validate as run

    _require(path)
    _check_allow(allow)
    group = from_env()  # under torchrun: the byte-reading pass is split across the ranks
    opts = ValidateOptions(consumer=consumer.value, allow=tuple(allow), trust=trust, load=load,
                           deep=deep, write_manifest=write_manifest, select=select,
                           ignore=ignore, fail_on=Severity.parse(fail_on.value), jobs=jobs,
                           allow_nonfinite=allow_nonfinite, dist=group)
    with _progress((deep or write_manifest) and (group is None or group.rank == 0)) as progress:
        report, findings = run(path, opts, progress)
    if fmt is OutputFormat.json:
        text = render.to_json(report, findings=findings) + "\n"
    elif fmt is OutputFormat.junit:
        text = render.junit(report, findings, opts.fail_on)
    elif fmt is OutputFormat.sarif:
        text = render.sarif(report, findings) + "\n"
    elif fmt is OutputFormat.github:
        text = render.github(report, findings)
    else:
        text = render.findings_text(report, findings, report.extra["verdict"], width=out.width,
                                    color=out.is_terminal)
    code = exit_code(findings, opts.fail_on)
    if group is not None:  # one report (rank 0's stdout), one exit code on every rank
        code = group.agree(code)
        group.close()
    sys.stdout.write(text)
    raise typer.Exit(code)


@app.command()
def latest(
    run_dir: Annotated[Path, typer.Argument(help="Run / output directory holding checkpoints.")],
    consumer: ConsumerOpt = ConsumerChoice.framework,
    allow: AllowOpt = [],  # noqa: B006
) -> None:
    """Print the newest checkpoint under RUN_DIR that passes validate (stderr says which newer
    ones were skipped and why). Exit 1 when none is valid."""
    from .latest import newest_valid

    _require(run_dir)
    _check_allow(allow)
    best, skipped = newest_valid(run_dir, consumer=consumer.value, allow=tuple(allow))
    from .dist import env_rank

    for path, reason in skipped if env_rank() == 0 else []:  # under torchrun: rank 0 reports
        err.print(f"skipped {path}: {reason}", markup=False)
    if best is None:
        err.print(f"ckptdoctor: no valid checkpoint under {run_dir}", markup=False)
        raise typer.Exit(EXIT_FINDINGS)
    sys.stdout.write(f"{best}\n")


@app.command()
def repair(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or directory.")],
    allow: AllowOpt = [],  # noqa: B006
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    backup_dir: Annotated[Optional[Path], typer.Option("--backup-dir", help="Where originals go (default .ckptdoctor-backup/<time>/ beside PATH).")] = None,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Do not keep originals (not recommended).")] = False,
    to: Annotated[str, typer.Option("--to", help="torch (default) or safetensors for pure tensor files.")] = "torch",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before rewriting.")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Restore the latest backup of PATH.")] = False,
    consumer: ConsumerOpt = ConsumerChoice.framework,
    trust: TrustOpt = False,
) -> None:
    """Rewrite files so they load with plain torch.load(weights_only=True) and still resume.
    Originals are backed up, results verified before they replace anything."""
    _require(path)
    _check_allow(allow)
    from .repair import plan_repair, render_plan, render_result
    from .repair import repair as run_repair
    from .repair import undo as run_undo

    if backup_dir is not None and no_backup:
        _fail(CliError(Code.REPAIR_REFUSED, str(path), "--backup-dir and --no-backup conflict"))
    if to not in ("torch", "safetensors"):
        _fail(CliError(Code.REPAIR_REFUSED, str(path), f"--to must be torch or safetensors, not {to}"))
    if undo:
        try:
            restored = run_undo(path, backup_dir=backup_dir)
        except (FileNotFoundError, OSError) as exc:
            _fail(CliError(Code.REPAIR_REFUSED, str(path), f"nothing to undo: {exc}", EXIT_FINDINGS))
        for p in restored:
            out.print(f"restored {p}", markup=False)
        raise typer.Exit(EXIT_OK)
    plan = plan_repair(path, allow=tuple(allow), consumer=consumer.value, to=to,
                       backup_dir=backup_dir, trust=trust)
    _emit(render_plan(plan))
    if dry_run or not plan.has_work:
        raise typer.Exit(plan.exit_code)
    if not yes and sys.stdin.isatty() and not typer.confirm("Rewrite these files?", default=True):
        raise typer.Exit(EXIT_FINDINGS)
    result = run_repair(path, allow=tuple(allow), backup_dir=backup_dir, no_backup=no_backup,
                        to=to, consumer=consumer.value, trust=trust)
    _emit(render_result(result))
    raise typer.Exit(result.exit_code)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Source checkpoint file or directory.")],
    dst: Annotated[Path, typer.Argument(help="Destination file or directory.")],
    to: Annotated[str, typer.Option("--to", help="safetensors, torch, dcp or safe (tensors + JSON).")],
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", help="e.g. 5GB; shards the output.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="keep, bf16, fp16 or fp32.")] = "keep",
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the bit-identical re-read.")] = False,
    drop_non_tensors: Annotated[bool, typer.Option("--drop-non-tensors", help="Drop non-tensor entries instead of a JSON sidecar.")] = False,
    strip_prefix: Annotated[Optional[str], typer.Option("--strip-prefix", help="Strip this key prefix (e.g. model.).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing DST (atomically).")] = False,
    allow: AllowOpt = [],  # noqa: B006
    trust: TrustOpt = False,
) -> None:
    """Convert between torch, safetensors, DCP, DeepSpeed ZeRO and Lightning in bounded memory
    (one tensor at a time), written atomically and verified."""
    _require(src)
    _check_allow(allow)
    from .convert import ConvertError, render_result
    from .convert import convert as run

    try:
        with _progress(True) as progress:
            result = run(src, dst, to, max_shard_size=max_shard_size, dtype=dtype,
                         verify=not no_verify, drop_non_tensors=drop_non_tensors,
                         strip_prefix=strip_prefix, allow=tuple(allow), trust=trust,
                         progress=progress, overwrite=overwrite)
    except ConvertError as exc:
        # one line: the underlying cause (e.g. CK101) when there is one, else the CK7xx reason
        cause = next((f for f in exc.findings[1:] if f.severity is Severity.ERROR), exc.finding)
        err.print(f"ckptdoctor: error: {cause.code} {cause.path}: {cause.message}"
                  .replace("\n", " "), markup=False)
        raise typer.Exit(EXIT_FINDINGS) from None
    _emit(render_result(result))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FINDINGS)


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _check_allow(names: list[str]) -> None:
    from .model import GlobalClass
    from .pickles.policy import classify

    for name in names:
        if "." not in name or any(not part.isidentifier() for part in name.split(".")):
            _fail(CliError(Code.UNKNOWN_GLOBAL, name, "--allow takes a dotted name such as "
                                                      "numpy.core.multiarray._reconstruct"))
        if classify(name) is GlobalClass.DANGEROUS:
            _fail(CliError(Code.DANGEROUS_GLOBAL, name, "can execute code; ckptdoctor never "
                                                        "allow-lists it", EXIT_FINDINGS))


def main() -> None:
    """Entry point: run the app; turn any unexpected exception into one line and exit 2."""
    from .dist import env_rank

    if env_rank() != 0:  # under torchrun only rank 0 prints the report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except OSError as exc:  # disk full, read-only directory, permission: the writes are atomic
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        where = f"{exc.filename} " if exc.filename else ""
        err.print(f"ckptdoctor: error: {Code.WRITE_FAILED.code} {where}{exc.strerror or exc}; "
                  "nothing was replaced, originals untouched", markup=False)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("ckptdoctor: interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        err.print(f"ckptdoctor: internal error: {type(exc).__name__}: {exc}".splitlines()[0],
                  markup=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    main()
