"""What the commands print through: the two consoles (`out`, `err`: rich, made on first use),
the progress bar on a terminal's stderr, `emit` for plain text, and `validate`'s document in
each --format.

Start-up is part of every command's time (`validate --deep` of a 1.5 GB file reads for about a
second): rich is imported only when something is printed through it; tests/test_startup.py
counts imports."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from .cli_options import OutputFormat, require_path
from .model import Severity

if TYPE_CHECKING:
    from .storage import AnyPath


class LazyConsole:
    """A rich Console made on first use (importing rich.console costs ~25 ms of start-up)."""

    def __init__(self, **options) -> None:
        self._options, self._console = options, None

    def real(self):
        """The Console itself (for rich objects that take one)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str):
        return getattr(self.real(), name)


out = LazyConsole(soft_wrap=True, highlight=False)
err = LazyConsole(stderr=True, soft_wrap=True, highlight=False)


@contextlib.contextmanager
def progress_bar(enabled: bool):
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
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err.real(),
                  transient=True) as bar:
        task = bar.add_task("reading", total=None)

        def advance(label: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=label[-40:])

        advance.set_total = lambda total: bar.update(task, total=total)  # type: ignore[attr-defined]
        yield advance


def emit(text: str) -> None:
    """TEXT on stdout, ending in one newline."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def validate_document(report, findings, fmt: OutputFormat, fail_on: Severity) -> str:
    """`validate`'s report and findings rendered in --format FMT."""
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


def missing_path_document(path: AnyPath, fmt: OutputFormat) -> None:
    """A missing PATH under --format json/junit/sarif: the document with its CK001 finding on
    stdout, the one-line error on stderr, exit 2 as for any unusable path."""
    from .inspect import inspect_path

    report = inspect_path(path)
    report.command = "validate"
    found = report.all_findings()
    report.extra.update(verdict="NOT RESUMABLE: path does not exist", resumable=False,
                        consumer={"framework": None, "version": None, "mode": None})
    sys.stdout.write(validate_document(report, found, fmt, Severity.ERROR))
    require_path(path)
