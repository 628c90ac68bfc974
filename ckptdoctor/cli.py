"""Thin typer CLI: arguments -> one library call -> a pure renderer -> an exit code.

Exit codes: 0 ok, 1 the checkpoint has findings at or above --fail-on (or a dangerous global),
2 usage error, unusable input path, or internal error. Errors are one line, never a traceback
(set CKPTDOCTOR_DEBUG=1 to see one): commands raise, and `ERRORS` maps each exception type to
an exit code and that line, in one place."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from . import __version__
from .cli_errors import ERRORS, error_table, report_error as _report
from .cli_options import (
    AllowOpt,
    ConsumerChoice,
    ConsumerOpt,
    ConvertDtype,
    DiffFormat,
    FailOn,
    FrameworkVersionOpt,
    MaxBytesOpt,
    OutputFormat,
    StorageOpt,
    TimeoutOpt,
    TrustOpt,
    check_allow,
    check_prefixes,
    framework_versions,
    require_path,
    resolve_path,
)
from .cli_output import emit, err, missing_path_document, out, progress_bar, validate_document
from .codes import Code
from .errors import ExitCode, RepairError, UsageError
from .model import Severity

if TYPE_CHECKING:
    from typer._click import Context as ClickContext  # what TyperGroup.invoke takes

# Start-up is part of every command's time (`validate --deep` of a 1.5 GB file reads for about
# a second): the module imports only what parsing needs; each command imports its own work, and
# rich is imported when something is printed through it (cli_output). tests/test_startup.py
# counts imports. The options and argument checks are cli_options, the error table cli_errors.

# typer's exits, aborts and usage errors (its vendored click's ClickException): typer reports them
_PASS_THROUGH = (typer.Exit, typer.Abort, typer.TyperException)


class _Group(TyperGroup):
    """Runs a command; an exception it raises becomes one line and an exit code (`ERRORS`),
    the same in-process (CliRunner) as under `python -m ckptdoctor`."""

    def invoke(self, ctx: ClickContext):
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:  # the exits and usage errors typer / click report themselves
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(_report(exc)) from None


app = typer.Typer(cls=_Group, add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Inspect, validate, repair and convert PyTorch / LLM training checkpoints "
                       "without running code from them.")
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = ExitCode.OK, ExitCode.FINDINGS, ExitCode.USAGE


def _version(value: bool) -> None:
    if value:
        out.print(f"ckptdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None
          ) -> None:
    """ckptdoctor: a checkpoint doctor for PyTorch and LLM training runs."""


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="Checkpoint file or directory (a path or a URL: "
                                             "s3://, gs://, hf://, http(s)://).")],
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
    storage_option: StorageOpt = [],
    timeout: TimeoutOpt = 60.0,
) -> None:
    """What is this checkpoint: layout, step, files, tensors, pickled globals, whether plain
    torch.load(weights_only=True) loads each file, and the memory a resume needs.
    Metadata only; never imports torch."""
    from .estimate import estimate, parse_bytes, render_text as estimate_text
    from .inspect import inspect_path
    from .render import inspect_text, to_json

    ckpt = resolve_path(path, storage_option, timeout)
    require_path(ckpt)
    try:
        ram_b, gpu_b = parse_bytes(ram), parse_bytes(gpu_mem)
    except ValueError as exc:
        raise UsageError.of(Code.EST_PARTIAL, ckpt, str(exc)) from None
    report = inspect_path(ckpt)
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
    path: Annotated[str, typer.Argument(help="Checkpoint file or directory (a path or a URL: "
                                             "s3://, gs://, hf://, http(s)://).")],
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
    storage_option: StorageOpt = [],
    timeout: TimeoutOpt = 60.0,
    max_bytes: MaxBytesOpt = None,
) -> None:
    """Pre-resume gate: is the checkpoint complete, intact and loadable by what will resume it?
    Exit 0 resumable, 1 findings at or above --fail-on, 2 usage or internal error."""
    from .dist import from_env
    from .validate import ValidateOptions, exit_code, validate as run

    versions = framework_versions(framework_version)
    ckpt = resolve_path(path, storage_option, timeout, max_bytes)
    from .storage import is_remote

    if is_remote(ckpt) and (load or write_manifest):
        raise UsageError.of(Code.REMOTE_READONLY, str(ckpt), "--load and --write-manifest need a "
                                 "local copy (download it first; see docs/remote.md)") from None
    if fmt in (OutputFormat.json, OutputFormat.junit, OutputFormat.sarif) and \
            not is_remote(ckpt) and not os.path.lexists(ckpt):
        # a CI step that parses the document still gets one: the missing path is its finding
        missing_path_document(ckpt, fmt)
    require_path(ckpt)
    check_allow(allow)
    check_prefixes(select + ignore)
    group = from_env()  # under torchrun: the byte-reading pass is split across the ranks
    opts = ValidateOptions(consumer=consumer.value, allow=tuple(allow), trust=trust, load=load,
                           deep=deep, write_manifest=write_manifest, select=select,
                           ignore=ignore, fail_on=Severity.parse(fail_on.value),
                           versions=versions, jobs=jobs, allow_nonfinite=allow_nonfinite,
                           dist=group)
    with progress_bar((deep or write_manifest) and (group is None or group.rank == 0)) as progress:
        report, findings = run(ckpt, opts, progress)
    text = validate_document(report, findings, fmt, opts.fail_on)
    code = exit_code(findings, opts.fail_on)
    if group is not None:  # one report (rank 0's stdout), one exit code on every rank
        code = group.agree(code)
        group.close()
    sys.stdout.write(text)
    raise typer.Exit(code)


@app.command()
def latest(
    run_dir: Annotated[str, typer.Argument(help="Run / output directory holding checkpoints "
                                                "(a path or a URL).")],
    consumer: ConsumerOpt = ConsumerChoice.framework,
    allow: AllowOpt = [],  # typer reads the default
    framework_version: FrameworkVersionOpt = [],
    storage_option: StorageOpt = [],
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Print the newest checkpoint under RUN_DIR that passes validate (stderr says which newer
    ones were skipped and why, and which can be repaired). Exit 1 when none is valid: use
    `ckpt=$(ckptdoctor latest out) || exit 1`."""
    from .latest import newest_valid

    versions = framework_versions(framework_version)
    root = resolve_path(run_dir, storage_option, timeout)
    require_path(root)
    check_allow(allow)
    result = newest_valid(root, consumer=consumer.value, allow=tuple(allow),
                          versions=versions)
    from .dist import env_rank

    for line in result.stderr_lines() if env_rank() == 0 else []:  # torchrun: rank 0 reports
        err.print(line, markup=False)
    if result.best is None:
        raise typer.Exit(EXIT_FINDINGS)
    sys.stdout.write(f"{result.best}\n")


@app.command()
def repair(
    path: Annotated[str, typer.Argument(help="Checkpoint file or directory.")],
    allow: AllowOpt = [],  # typer reads the default
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
    from .storage import is_url, redact

    if is_url(path) and not path.lower().startswith("file://"):
        raise UsageError.of(Code.REMOTE_READONLY, redact(path), "repair does not rewrite remote "
                                 "checkpoints: download it, repair the local copy, upload the "
                                 "result (docs/remote.md)") from None
    ckpt = resolve_path(path)
    assert isinstance(ckpt, Path)  # a URL other than file:// was refused above
    require_path(ckpt)
    check_allow(allow)
    from .repair import apply_repair, prepare_repair, render_plan, render_result, undo as run_undo
    from .repair.model import RepairTarget

    if backup_dir is not None and no_backup:
        raise UsageError.of(Code.REPAIR_REFUSED, ckpt, "--backup-dir and --no-backup conflict")
    if to not in tuple(RepairTarget):
        raise UsageError.of(Code.REPAIR_REFUSED, ckpt,
                            f"--to must be {' or '.join(RepairTarget)}, not {to}")
    if undo:
        try:
            restored = run_undo(ckpt, backup_dir=backup_dir)
        except OSError as exc:
            raise RepairError(f"nothing to undo: {exc}", path=str(ckpt)) from None
        for p in restored:
            out.print(f"restored {p}", markup=False)
        raise typer.Exit(EXIT_OK)
    prepared = prepare_repair(ckpt, allow=tuple(allow), consumer=consumer.value, to=to,
                              backup_dir=backup_dir)
    plan = prepared.plan
    emit(render_plan(plan))
    if dry_run or not plan.has_work:
        raise typer.Exit(plan.exit_code)
    if not yes and not sys.stdin.isatty():
        err.print(f"ckptdoctor: {Code.REPAIR_REFUSED.code} {ckpt}: nothing rewritten (not a "
                  "terminal): add --yes to rewrite these files", markup=False)
        raise typer.Exit(EXIT_FINDINGS)
    if not yes and not typer.confirm("Rewrite these files?", default=True):
        raise typer.Exit(EXIT_FINDINGS)
    result = apply_repair(prepared, no_backup=no_backup)  # the plan shown, not a new one
    emit(render_result(result))
    raise typer.Exit(result.exit_code)


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Source checkpoint file or directory (a path or a "
                                            "URL).")],
    dst: Annotated[str, typer.Argument(help="Destination file or directory (a path or a new "
                                            "URL prefix).")],
    to: Annotated[str, typer.Option(
        "--to", help="safetensors, torch, dcp or safe (tensors + JSON).")],
    max_shard_size: Annotated[str | None, typer.Option(
        "--max-shard-size", help="e.g. 5GB; shards the output.")] = None,
    dtype: Annotated[ConvertDtype, typer.Option(
        "--dtype", help="Cast floating-point tensors.")] = ConvertDtype.keep,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip the bit-identical re-read.")] = False,
    drop_non_tensors: Annotated[bool, typer.Option(
        "--drop-non-tensors",
        help="Drop non-tensor entries instead of a JSON sidecar.")] = False,
    strip_prefix: Annotated[str | None, typer.Option(
        "--strip-prefix", help="Strip this key prefix (e.g. model.).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing DST (atomically).")] = False,
    allow: AllowOpt = [],  # typer reads the default
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
    storage_option: StorageOpt = [],
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Convert between torch, safetensors, DCP, DeepSpeed ZeRO and Lightning in bounded memory
    (one tensor at a time), written atomically and verified."""
    source = resolve_path(src, storage_option, timeout)
    dest = resolve_path(dst, storage_option, timeout)
    require_path(source)
    check_allow(allow)
    from .convert import convert as run_local, render_result
    from .convert.remote import convert_any

    def run(src, dst, to, **kw):
        return convert_any(src, dst, to, run_local, **kw)

    with progress_bar(True) as progress:
        result = run(source, dest, to, max_shard_size=max_shard_size, dtype=dtype.value,
                     verify=not no_verify, drop_non_tensors=drop_non_tensors,
                     strip_prefix=strip_prefix, allow=tuple(allow), trust=trust,
                     progress=progress, overwrite=overwrite, add_prefix=add_prefix,
                     nest=nest, params=params, weights_only=weights_only)
    emit(render_result(result))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FINDINGS)


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
    allow: AllowOpt = [],  # typer reads the default
    trust: TrustOpt = False,
) -> None:
    """What differs between two checkpoints: keys, shapes, dtypes, values (streamed one tensor
    at a time), step / lr / scheduler / optimizer moments / RNG. Exit 0 equal within
    --rtol/--atol (or resume-equivalent), 1 different, 2 error."""
    from .diff import diff as run, exit_code, render_text, to_json

    require_path(a)
    require_path(b)
    check_allow(allow)
    report = run(a, b, rtol=rtol, atol=atol, resume_equivalent=resume_equivalent, jobs=jobs,
                 allow=tuple(allow), trust=trust)
    if fmt is DiffFormat.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        sys.stdout.write(render_text(report, width=out.width, color=out.is_terminal))
    raise typer.Exit(exit_code(report))


@app.command()
def reshard(
    src: Annotated[Path, typer.Argument(
        help="DeepSpeed ZeRO-1/2/3 checkpoint (the directory with `latest`, or the tag "
             "directory), or a DCP directory (with `.metadata`).")],
    dst: Annotated[Path, typer.Argument(help="New checkpoint directory.")],
    world_size: Annotated[int, typer.Option(
        "--world-size", min=1, help="Data-parallel ranks to resume on.")],
    strict: Annotated[bool, typer.Option(
        "--strict",
        help="Refuse when per-rank state cannot be split (values that differ between "
             "ranks, items or files saved per rank).")] = False,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip re-reading the output.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing DST (atomically).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow: AllowOpt = [],  # typer reads the default
    trust: TrustOpt = False,
) -> None:
    """Rewrite a DeepSpeed ZeRO-1/2/3 or DCP checkpoint saved on N ranks for --world-size M
    ranks, offline on CPU, verified. DeepSpeed's load_checkpoint then resumes it on M ranks;
    a DCP checkpoint is re-chunked as FSDP2 shards it on M ranks, so each rank's dcp.load
    reads its own items whole from its own file."""
    require_path(src)
    check_allow(allow)
    from .reshard import render, reshard as run

    result = run(src, dst, world_size, strict=strict, verify=not no_verify,
                 overwrite=overwrite, allow=tuple(allow), trust=trust)
    if json_out:
        import json

        emit(json.dumps(result.to_json(), indent=1))
    else:
        emit(render(result))
    raise typer.Exit(EXIT_OK)


@app.command()
def codes(
    prefix: Annotated[str | None, typer.Argument(help="A code or prefix: CK101, CK4.")] = None,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="The docs table (docs/validate.md).")] = False,
) -> None:
    """List the stable finding codes, their severity, meaning and what to do."""
    from .codes import lookup, markdown_table

    if markdown:
        emit(markdown_table())
        raise typer.Exit(EXIT_OK)
    found = lookup(prefix or "CK")
    if not found:
        raise UsageError.of(Code.BAD_PREFIX, prefix or "", "matches no finding code")
    for c in found:
        emit(f"{c.code}  {c.severity}  {c.explanation}"
              + (f"\n       fix: {c.fix}" if c.fix else ""))
    raise typer.Exit(EXIT_OK)


def main() -> None:
    """Entry point: run the app. Every error becomes one line and an exit code (`ERRORS`)."""
    from .dist import env_rank

    if env_rank() != 0:  # under torchrun only rank 0 prints the report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except (Exception, KeyboardInterrupt) as exc:  # raised outside a command (e.g. a callback)
        sys.exit(_report(exc))


__all__ = ["app", "main", "ERRORS", "error_table"]


if __name__ == "__main__":  # pragma: no cover
    main()
