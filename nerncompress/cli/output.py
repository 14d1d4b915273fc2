"""The one place the CLI writes: results on stdout, logs, progress and errors on stderr.

* Results: rich tables on stdout, or with ``--json`` exactly one JSON document on stdout and nothing else there.
* Logs and progress: stderr only, so ``nerncompress ... --json | jq`` always parses. Progress bars are drawn only
  when stderr is a terminal; otherwise a few plain progress lines are logged.
* Errors: one line ``Error: <message>`` on stderr and an exit code from ``EXIT_CODES``; the full traceback only
  with ``NERNCOMPRESS_DEBUG=1``.
* ``NO_COLOR`` (any value) turns colour off.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .. import (
    AccuracyTargetMissed,
    ArchDetectionError,
    ArtifactError,
    CheckpointError,
    DataError,
    ExportCheckError,
    NernError,
    StepCallback,
    UsageError,
)

DEBUG_ENV = "NERNCOMPRESS_DEBUG"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ACCURACY_TARGET_MISSED = 3
EXIT_EXPORT_CHECK_FAILED = 4
EXIT_INTERRUPTED = 130

# What each exit code means, for --help and the README.
EXIT_CODE_DOCS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "error: a missing, unreadable, corrupt or inconsistent input (checkpoint, .nern, dataset), an "
                 "undetectable architecture, NaN/Inf weights, or an unexpected failure"),
    (EXIT_USAGE, "usage error: unknown option or value, missing argument, unavailable --device, -o equal to an "
                 "input, missing or unwritable output folder, a teacher of another task, a --resume that does not "
                 "match"),
    (EXIT_ACCURACY_TARGET_MISSED, "accuracy target missed (the artifact is still written)"),
    (EXIT_EXPORT_CHECK_FAILED, "export check failed (ONNX differs from PyTorch; nothing written)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C or SIGTERM); fit and distill save their progress first: "
                       "rerun with --resume"),
)

# Checked in order, first match wins: subclasses before NernError.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (AccuracyTargetMissed, EXIT_ACCURACY_TARGET_MISSED),
    (ExportCheckError, EXIT_EXPORT_CHECK_FAILED),
    (ArchDetectionError, EXIT_ERROR),
    (CheckpointError, EXIT_ERROR),
    (ArtifactError, EXIT_ERROR),
    (DataError, EXIT_ERROR),
    (NernError, EXIT_ERROR),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)

# ------------------------------------------------------------------------------------------------------ errors
def debug_enabled() -> bool:
    """Whether ``NERNCOMPRESS_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception: ``EXIT_CODES``, else 1 (an unexpected error)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


def error_message(exc: BaseException) -> str:
    """One line describing ``exc``; unexpected exception types are named, with a hint to get the traceback."""
    if isinstance(exc, KeyboardInterrupt):
        detail = " ".join(str(exc).split())
        return detail if detail.startswith("interrupted") else f"interrupted{': ' + detail if detail else ''}"
    text = " ".join(str(exc).split())
    if isinstance(exc, NernError):
        return text or type(exc).__name__
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"unexpected {detail} (set {DEBUG_ENV}=1 for the traceback and please report it)"


def in_flags(message: str, flags: dict[str, str]) -> str:
    """A library message, which names keyword arguments, worded with the command's flags instead.

    Renamed: the first word and every snake_case word that is a keyword of the command (``lr must be > 0`` ->
    ``--lr must be > 0``); other words stay, so that plain English such as "give data" is left alone.
    """
    def rename(match: re.Match[str]) -> str:
        word = match.group(0)
        first = match.start() == 0
        return flags[word] if word in flags and (first or "_" in word) else word

    return re.sub(r"(?<![\w.'/-])[a-z][a-z0-9_]*(?![\w'/])", rename, message)


def report_error(exc: BaseException, flags: dict[str, str] | None = None) -> int:
    """Print ``Error: <one line>`` on stderr (after the traceback in debug mode) and return the exit code.

    ``flags`` maps keyword names to the running command's flags: a ``UsageError`` is then worded in flags.
    """
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = error_message(exc)
    if flags and isinstance(exc, UsageError):
        message = in_flags(message, flags)
    # Plain write, not rich: messages hold paths and [brackets] that rich would read as markup.
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return exit_code_for(exc)


def report_usage_error(exc: Exception, command_path: str | None = None) -> int:
    """Print a command-line parsing error (unknown option, bad value, missing argument) as one line; exit 2.

    Click would print the usage line, a hint and a boxed message; a CI log wants one line, with the hint in it.
    """
    message = " ".join(str(getattr(exc, "format_message", lambda: str(exc))()).split()) or type(exc).__name__
    hint = f" (see '{command_path} --help')" if command_path else ""
    sys.stderr.write(f"Error: {message}{hint}\n")
    sys.stderr.flush()
    return int(getattr(exc, "exit_code", EXIT_USAGE))


# ----------------------------------------------------------------------------------------------------- output
def _no_color() -> bool:
    return "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != ""


def stdout_console() -> Console:
    """Console for results. Created per call: tests and pipes swap ``sys.stdout``."""
    return Console(file=sys.stdout, no_color=_no_color(), highlight=False)


def stderr_console() -> Console:
    """Console for logs and progress."""
    return Console(file=sys.stderr, no_color=_no_color(), highlight=False)


def to_json(data: Any) -> str:
    """Serialise a result; paths, tuples and other non-JSON values become strings or lists."""
    return json.dumps(data, indent=2, default=str)


class Output:
    """Results to stdout (tables or one JSON document), logs and progress to stderr: the CLI's ``Reporter``.

    Args:
        json_mode: ``--json`` was given.
        quiet: print neither the result nor logs nor progress (a data-parallel run's ranks other than 0); errors
            are still printed, by ``report_error``.
    """

    def __init__(self, json_mode: bool = False, *, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        # One stderr console, shared by logs and progress bars, so that logs print above a live bar.
        self.err = stderr_console()

    def result(self, data: Mapping[str, Any], render: Callable[[Console, Mapping[str, Any]], None]) -> None:
        """Emit the command's result: ``render(console, data)`` for people, or ``data`` as JSON."""
        if self.quiet:
            return
        if self.json_mode:
            sys.stdout.write(to_json(data) + "\n")
            sys.stdout.flush()
        else:
            render(stdout_console(), data)

    def log(self, message: str) -> None:
        """One log line on stderr."""
        if self.quiet:
            return
        self.err.print(message, markup=False, style="dim", highlight=False)

    @contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[StepCallback]:
        """Yield an ``on_step(step, total, metrics)`` callback drawing a progress bar on stderr.

        The bar shows from the start of the phase, with loss and RMSE when ``metrics`` has them, and an ETA; a
        phase of unknown length (``total`` None) shows a spinner and the elapsed time. When stderr is not a
        terminal (CI, pipes), a plain line is logged at each tenth of the phase and at its end.
        """
        if self.quiet:
            yield lambda step, total, metrics: None
            return
        if not self.err.is_terminal:
            yield self._progress_lines(name)
            return
        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
        if total is not None:
            columns += [
                BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[figures]}"), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(),
            ]  # fmt: skip
        else:
            columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=False) as bar:
            task = bar.add_task(escape(name), total=total, figures="")

            def on_step(step: int, phase_total: int, metrics: dict[str, float]) -> None:
                figures = "  ".join(f"{key} {metrics[key]:.4g}" for key in ("loss", "rmse") if key in metrics)
                bar.update(task, completed=step, total=phase_total, figures=figures)

            yield on_step

    def _progress_lines(self, name: str) -> StepCallback:
        logged: set[int] = set()

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            tenth = (10 * step) // max(total, 1)
            if tenth in logged:
                return
            logged.add(tenth)
            figures = " ".join(f"{key} {metrics[key]:.4g}" for key in ("loss", "rmse", "kd") if key in metrics)
            self.log(f"{name}: step {step}/{total} {figures}".rstrip())

        return on_step


# ------------------------------------------------------------------------------------------------- formatting
def human_bytes(count: int | None) -> str:
    """``1234567`` -> ``"1.23 MB (1,234,567 B)"``; decimal units."""
    if count is None:
        return "-"
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            break
    return f"{value:.2f} {unit} ({count:,} B)"


def percent(ratio: float | None) -> str:
    """A ratio as a percentage with two significant decimals: 0.2345 -> ``"23.45%"``."""
    return "-" if ratio is None else f"{100 * ratio:.2f}%"


def key_value_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column table of labelled values."""
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")  # hashes and paths wrap instead of being cut
    for key, value in rows:
        table.add_row(key, cell(value))
    return table


def cell(value: Any) -> str:
    """A value as table text: None as "-", ints with thousands separators, the rest escaped for rich."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))  # a path or a data source like "x.npz[holdout part]" is text, not rich markup


def number(value: Any) -> str:
    """A float with four significant digits, or "-"."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def render_gate(console: Console, gate: Mapping[str, Any] | None) -> None:
    """The verdict of an accuracy gate, as one line under a command's table."""
    if gate is not None:
        style = "green" if gate["passed"] else "bold red"
        console.print(escape(gate["message"]), style=style)
