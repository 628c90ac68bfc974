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
from typing import Annotated

import typer
from rich.console import Console

from . import __version__
from .codes import Code
from .model import Severity

app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
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
    help="Dotted global of unknown safety you vouch for (e.g. mylib.Config). Repeatable. "
         "Reviewed data names need no --allow; code-executing names are refused even when "
         "named.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", help="Allow the last loader strategy: torch.load(weights_only=False) with "
                    "Python's unpickler restricted to vetted names (torch defaults, reviewed "
                    "data, --allow names). Admits no unknown name by itself; never for a file "
                    "whose scan is not complete or finds a code-executing global.")]
ConsumerOpt = Annotated[ConsumerChoice, typer.Option(
    "--consumer", help="Judge files by how the layout's own framework resumes (default) or by "
                       "plain torch.load(weights_only=True).")]

FrameworkVersionOpt = Annotated[list[str], typer.Option(
    "--framework-version", metavar="NAME=VERSION",
    help="Judge as if NAME (torch, transformers, accelerate, deepspeed, lightning, peft) were "
         "at VERSION, e.g. deepspeed=0.15.4. Repeatable. Default: the installed versions.")]


def _versions(specs: list[str]) -> dict[str, str]:
    from .layouts.versions import parse_override

    out = {}
    for spec in specs:
        try:
            name, version = parse_override(spec)
        except ValueError as exc:
            _fail(CliError(Code.FRAMEWORK_VERSION, spec, str(exc)))
        out[name] = version
    return out


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
def _root(version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None
          ) -> None:
    """ckptdoctor: a checkpoint doctor for PyTorch and LLM training runs."""


@contextlib.contextmanager
def _progress(enabled: bool):
    """A rich progress bar on stderr when it is a terminal; yields a (label, nbytes) callback."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON document (schema_version 1).")] = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor.")] = False,
    ram: Annotated[str | None, typer.Option(
        "--ram", metavar="SIZE",
        help="CPU RAM per rank of the resuming machine (e.g. 64GB); default: this machine's "
             "available memory.")] = None,
    gpu_mem: Annotated[str | None, typer.Option(
        "--gpu-mem", metavar="SIZE",
        help="GPU memory per rank (e.g. 80GB); warns when the resume estimate exceeds it.")] = None,
) -> None:
    """What is this checkpoint: layout, step, files, tensors, pickled globals, whether plain
    torch.load(weights_only=True) loads each file, and the memory a resume needs.
    Metadata only; never imports torch."""
    from .estimate import estimate, parse_bytes, render_text as estimate_text
    from .inspect import inspect_path
    from .render import inspect_text, to_json

    _require(path)
    try:
        ram_b, gpu_b = parse_bytes(ram), parse_bytes(gpu_mem)
    except ValueError as exc:
        _fail(CliError(Code.EST_PARTIAL, str(path), str(exc)))
    report = inspect_path(path)
    est = estimate(report, ram=ram_b, gpu_mem=gpu_b)
    if json_out:
        report.extra["memory_estimate"] = est.to_json()
        sys.stdout.write(to_json(report, with_tensors=tensors) + "\n")
    else:
        sys.stdout.write(inspect_text(report, tensors, width=out.width, color=out.is_terminal))
        if est.params:
            sys.stdout.write(estimate_text(est))
    if any(f.code == Code.DANGEROUS_GLOBAL.code for f in report.all_findings()):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or directory.")],
    consumer: ConsumerOpt = ConsumerChoice.framework,
    allow: AllowOpt = [],  # typer reads the default
    trust: TrustOpt = False,
    load: Annotated[bool, typer.Option(
        "--load", help="Really load each file through the loader chain.")] = False,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Read all bytes: zip CRC32s, NaN/Inf, optimizer shapes.")] = False,
    write_manifest: Annotated[bool, typer.Option(
        "--write-manifest",
        help="Record sha256 of every file as an OpenSSF model-signing (in-toto) manifest; later "
             "runs verify it.")] = False,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=0,
        help="Files read in parallel by --deep / manifests (0: one per CPU).")] = 0,
    allow_nonfinite: Annotated[bool, typer.Option(
        "--allow-nonfinite",
        help="NaN/Inf in parameters or optimizer state is a warning, not an error.")] = False,
    fmt: Annotated[OutputFormat, typer.Option(
        "--format", help="Output format.")] = OutputFormat.text,
    select: Annotated[list[str], typer.Option(
        "--select", metavar="PREFIX", help="Only codes starting with PREFIX.")] = [],
    ignore: Annotated[list[str], typer.Option(
        "--ignore", metavar="PREFIX", help="Drop codes starting with PREFIX.")] = [],
    fail_on: Annotated[FailOn, typer.Option(
        "--fail-on", help="Lowest severity that fails (exit 1).")] = FailOn.error,
    framework_version: FrameworkVersionOpt = [],
) -> None:
    """Pre-resume gate: is the checkpoint complete, intact and loadable by what will resume it?
    Exit 0 resumable, 1 findings at or above --fail-on, 2 usage or internal error."""
    from .dist import from_env
    from .validate import ValidateOptions, exit_code, validate as run

    versions = _versions(framework_version)
    if fmt in (OutputFormat.json, OutputFormat.junit, OutputFormat.sarif) and \
            not os.path.lexists(path):
        # a CI step that parses the document still gets one: the missing path is its finding
        _require_doc(path, fmt)
    _require(path)
    _check_allow(allow)
    _check_prefixes(select + ignore)
    group = from_env()  # under torchrun: the byte-reading pass is split across the ranks
    opts = ValidateOptions(consumer=consumer.value, allow=tuple(allow), trust=trust, load=load,
                           deep=deep, write_manifest=write_manifest, select=select,
                           ignore=ignore, fail_on=Severity.parse(fail_on.value),
                           versions=versions, jobs=jobs, allow_nonfinite=allow_nonfinite,
                           dist=group)
    with _progress((deep or write_manifest) and (group is None or group.rank == 0)) as progress:
        report, findings = run(path, opts, progress)
    text = _validate_doc(report, findings, fmt, opts.fail_on)
    code = exit_code(findings, opts.fail_on)
    if group is not None:  # one report (rank 0's stdout), one exit code on every rank
        code = group.agree(code)
        group.close()
    sys.stdout.write(text)
    raise typer.Exit(code)


def _validate_doc(report, findings, fmt: OutputFormat, fail_on: Severity) -> str:
    from . import render

    if fmt is OutputFormat.json:
        return render.to_json(report, findings=findings) + "\n"
    if fmt is OutputFormat.junit:
        return render.junit(report, findings, fail_on)
    if fmt is OutputFormat.sarif:
        return render.sarif(report, findings) + "\n"
    if fmt is OutputFormat.github:
        return render.github(report, findings)
    return render.findings_text(report, findings, report.extra["verdict"], width=out.width,
                                color=out.is_terminal)


def _require_doc(path: Path, fmt: OutputFormat) -> None:
    """A missing PATH under --format json/junit/sarif: the document with its CK001 finding on
    stdout, the one-line error on stderr, exit 2 as for any unusable path."""
    from .inspect import inspect_path

    report = inspect_path(path)
    report.command = "validate"
    found = report.all_findings()
    report.extra.update(verdict="NOT RESUMABLE: path does not exist", resumable=False,
                        consumer={"framework": None, "version": None, "mode": None})
    sys.stdout.write(_validate_doc(report, found, fmt, Severity.ERROR))
    _require(path)


@app.command()
def latest(
    run_dir: Annotated[Path, typer.Argument(help="Run / output directory holding checkpoints.")],
    consumer: ConsumerOpt = ConsumerChoice.framework,
    allow: AllowOpt = [],
    framework_version: FrameworkVersionOpt = [],
) -> None:
    """Print the newest checkpoint under RUN_DIR that passes validate (stderr says which newer
    ones were skipped and why, and which can be repaired). Exit 1 when none is valid: use
    `ckpt=$(ckptdoctor latest out) || exit 1`."""
    from .latest import newest_valid

    versions = _versions(framework_version)
    _require(run_dir)
    _check_allow(allow)
    result = newest_valid(run_dir, consumer=consumer.value, allow=tuple(allow),
                          versions=versions)
    from .dist import env_rank

    for line in result.stderr_lines() if env_rank() == 0 else []:  # torchrun: rank 0 reports
        err.print(line, markup=False)
    if result.best is None:
        raise typer.Exit(EXIT_FINDINGS)
    sys.stdout.write(f"{result.best}\n")


@app.command()
def repair(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or directory.")],
    allow: AllowOpt = [],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan; change nothing.")] = False,
    backup_dir: Annotated[Path | None, typer.Option(
        "--backup-dir",
        help="Where originals go (default .ckptdoctor-backup/<time>/ beside PATH).")] = None,
    no_backup: Annotated[bool, typer.Option(
        "--no-backup", help="Do not keep originals (not recommended).")] = False,
    to: Annotated[str, typer.Option(
        "--to", help="torch (default) or safetensors for pure tensor files.")] = "torch",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before rewriting.")] = False,
    undo: Annotated[bool, typer.Option(
        "--undo", help="Restore the latest backup of PATH.")] = False,
    consumer: ConsumerOpt = ConsumerChoice.framework,
) -> None:
    """Rewrite files so they load with plain torch.load(weights_only=True) and still resume.
    Originals are backed up, results verified before they replace anything. Without --yes it
    asks on a terminal; otherwise it only prints the plan and exits 1."""
    _require(path)
    _check_allow(allow)
    from .repair import (
        plan_repair,
        render_plan,
        render_result,
        repair as run_repair,
        undo as run_undo,
    )

    if backup_dir is not None and no_backup:
        _fail(CliError(Code.REPAIR_REFUSED, str(path), "--backup-dir and --no-backup conflict"))
    if to not in ("torch", "safetensors"):
        _fail(CliError(Code.REPAIR_REFUSED, str(path),
                       f"--to must be torch or safetensors, not {to}"))
    if undo:
        try:
            restored = run_undo(path, backup_dir=backup_dir)
        except (FileNotFoundError, OSError) as exc:
            _fail(CliError(Code.REPAIR_REFUSED, str(path), f"nothing to undo: {exc}",
                           EXIT_FINDINGS))
        for p in restored:
            out.print(f"restored {p}", markup=False)
        raise typer.Exit(EXIT_OK)
    plan = plan_repair(path, allow=tuple(allow), consumer=consumer.value, to=to,
                       backup_dir=backup_dir)
    _emit(render_plan(plan))
    if dry_run or not plan.has_work:
        raise typer.Exit(plan.exit_code)
    if not yes and not sys.stdin.isatty():
        err.print(f"ckptdoctor: {Code.REPAIR_REFUSED.code} {path}: nothing rewritten (not a "
                  "terminal): add --yes to rewrite these files", markup=False)
        raise typer.Exit(EXIT_FINDINGS)
    if not yes and not typer.confirm("Rewrite these files?", default=True):
        raise typer.Exit(EXIT_FINDINGS)
    result = run_repair(path, allow=tuple(allow), backup_dir=backup_dir, no_backup=no_backup,
                        to=to, consumer=consumer.value)
    _emit(render_result(result))
    raise typer.Exit(result.exit_code)


class ConvertDtype(str, enum.Enum):
    """--dtype of `convert`: floating-point tensors are cast to it."""

    keep = "keep"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Source checkpoint file or directory.")],
    dst: Annotated[Path, typer.Argument(help="Destination file or directory.")],
    to: Annotated[str, typer.Option(
        "--to", help="safetensors, torch, dcp or safe (tensors + JSON).")],
    max_shard_size: Annotated[str | None, typer.Option(
        "--max-shard-size", help="e.g. 5GB; shards the output.")] = None,
    dtype: Annotated[ConvertDtype, typer.Option(
        "--dtype", help="Cast floating-point tensors.")] = ConvertDtype.keep,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip the bit-identical re-read.")] = False,
    drop_non_tensors: Annotated[bool, typer.Option(
        "--drop-non-tensors", help="Drop non-tensor entries instead of a JSON sidecar.")] = False,
    strip_prefix: Annotated[str | None, typer.Option(
        "--strip-prefix", help="Strip this key prefix (e.g. model.).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing DST (atomically).")] = False,
    allow: AllowOpt = [],
    trust: TrustOpt = False,
    add_prefix: Annotated[str | None, typer.Option(
        "--add-prefix", help="Prepend this to every key (after --strip-prefix).")] = None,
    nest: Annotated[str | None, typer.Option(
        "--nest", help="--to dcp: put the state dict under this key (Lingua: model).")] = None,
    params: Annotated[Path | None, typer.Option(
        "--params", help="--to dcp: write this file as params.json.")] = None,
    weights_only: Annotated[bool, typer.Option(
        "--weights-only",
        help="Export only the weights of a checkpoint directory; list the training state left "
             "behind.")] = False,
) -> None:
    """Convert between torch, safetensors, DCP, DeepSpeed ZeRO and Lightning in bounded memory
    (one tensor at a time), written atomically and verified."""
    _require(src)
    _check_allow(allow)
    from .convert import ConvertError, convert as run, render_result

    try:
        with _progress(True) as progress:
            result = run(src, dst, to, max_shard_size=max_shard_size, dtype=dtype.value,
                         verify=not no_verify, drop_non_tensors=drop_non_tensors,
                         strip_prefix=strip_prefix, allow=tuple(allow), trust=trust,
                         progress=progress, overwrite=overwrite, add_prefix=add_prefix,
                         nest=nest, params=params, weights_only=weights_only)
    except ConvertError as exc:
        # one line: the underlying cause (e.g. CK101) when there is one, else the CK7xx reason
        cause = next((f for f in exc.findings[1:] if f.severity is Severity.ERROR), exc.finding)
        err.print(f"ckptdoctor: error: {cause.code} {cause.path}: {cause.message}"
                  .replace("\n", " "), markup=False)
        raise typer.Exit(EXIT_FINDINGS) from None
    _emit(render_result(result))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FINDINGS)


class DiffFormat(str, enum.Enum):
    text = "text"
    json = "json"


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="First checkpoint (file or directory).")],
    b: Annotated[Path, typer.Argument(help="Second checkpoint (any format or layout).")],
    resume_equivalent: Annotated[bool, typer.Option(
        "--resume-equivalent",
        help="Would B continue training exactly as A (bit-identical weights, optimizer, scheduler, "
             "RNG, step)?")] = False,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance for 'equal'.")] = 1e-5,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance for 'equal'.")] = 1e-8,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, help="Tensor pairs compared at once (memory grows with it).")] = 1,
    fmt: Annotated[DiffFormat, typer.Option("--format", help="Output format.")] = DiffFormat.text,
    allow: AllowOpt = [],
    trust: TrustOpt = False,
) -> None:
    """What differs between two checkpoints: keys, shapes, dtypes, values (streamed one tensor
    at a time), step / lr / scheduler / optimizer moments / RNG. Exit 0 equal within
    --rtol/--atol (or resume-equivalent), 1 different, 2 error."""
    from .diff import DiffError, diff as run, exit_code, render_text, to_json

    _require(a)
    _require(b)
    _check_allow(allow)
    try:
        report = run(a, b, rtol=rtol, atol=atol, resume_equivalent=resume_equivalent, jobs=jobs,
                     allow=tuple(allow), trust=trust)
    except DiffError as exc:
        f = exc.finding
        _fail(CliError(Code.DIFF_UNREADABLE, f.path, f.message.replace("\n", " ")))
    if fmt is DiffFormat.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        sys.stdout.write(render_text(report, width=out.width, color=out.is_terminal))
    raise typer.Exit(exit_code(report))


@app.command()
def reshard(
    src: Annotated[Path, typer.Argument(
        help="DeepSpeed ZeRO-1/2 checkpoint (the directory with `latest`, or the tag directory).")],
    dst: Annotated[Path, typer.Argument(help="New checkpoint directory.")],
    world_size: Annotated[int, typer.Option(
        "--world-size", min=1, help="Data-parallel ranks to resume on.")],
    strict: Annotated[bool, typer.Option(
        "--strict",
        help="Refuse when per-rank state that cannot be split differs between ranks.")] = False,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip re-reading the output.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing DST (atomically).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow: AllowOpt = [],
    trust: TrustOpt = False,
) -> None:
    """Rewrite a DeepSpeed ZeRO-1/2 checkpoint saved on N ranks for --world-size M ranks,
    offline on CPU, verified; DeepSpeed's load_checkpoint then resumes it on M ranks."""
    _require(src)
    _check_allow(allow)
    from .convert import ConvertError
    from .reshard import render, reshard as run

    try:
        result = run(src, dst, world_size, strict=strict, verify=not no_verify,
                     overwrite=overwrite, allow=tuple(allow), trust=trust)
    except ConvertError as exc:
        cause = next((f for f in exc.findings[1:] if f.severity is Severity.ERROR), exc.finding)
        err.print(f"ckptdoctor: error: {cause.code} {cause.path}: {cause.message}"
                  .replace("\n", " "), markup=False)
        raise typer.Exit(EXIT_FINDINGS) from None
    if json_out:
        import json

        _emit(json.dumps(result.to_json(), indent=1))
    else:
        _emit(render(result))
    raise typer.Exit(EXIT_OK)


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _check_prefixes(prefixes: list[str]) -> None:
    from .codes import lookup

    for p in prefixes:
        if not lookup(p):
            _fail(CliError(Code.BAD_PREFIX, p, "matches no finding code (see `ckptdoctor codes`)"))


@app.command()
def codes(
    prefix: Annotated[str | None, typer.Argument(help="A code or prefix: CK101, CK4.")] = None,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="The docs table (docs/validate.md).")] = False,
) -> None:
    """List the stable finding codes, their severity, meaning and what to do."""
    from .codes import lookup, markdown_table

    if markdown:
        _emit(markdown_table())
        raise typer.Exit(EXIT_OK)
    found = lookup(prefix or "CK")
    if not found:
        _fail(CliError(Code.BAD_PREFIX, prefix or "", "matches no finding code"))
    for c in found:
        _emit(f"{c.code}  {c.severity}  {c.explanation}"
              + (f"\n       fix: {c.fix}" if c.fix else ""))
    raise typer.Exit(EXIT_OK)


def _check_allow(names: list[str]) -> None:
    from .pickles.policy import Verdict, vet

    for name in names:
        if "." not in name or any(not part.isidentifier() for part in name.split(".")):
            _fail(CliError(Code.UNKNOWN_GLOBAL, name, "--allow takes a dotted name such as "
                                                      "numpy.core.multiarray._reconstruct"))
        if vet(name, names).verdict is Verdict.DANGEROUS:
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
    except Exception as exc:  # the last line of defence: never a traceback
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        err.print(f"ckptdoctor: internal error: {type(exc).__name__}: {exc}".splitlines()[0],
                  markup=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    main()
