"""Command line interface: ``nerncompress`` (installed script) or ``python -m nerncompress``."""

from __future__ import annotations

import signal
import sys

from .app import app
from .output import report_error

__all__ = ["app", "main"]


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM received")


def main() -> None:
    """Run the app as a program: parse ``sys.argv``, run the command, exit with its code.

    Typer runs in standalone mode, so its own usage errors print their message and exit 2. Errors raised inside a
    command are mapped by the app's group; this catches what escapes it (an error while parsing, or an interrupt
    outside a command) the same way. SIGTERM stops a command as Ctrl-C does (exit 130, temporary files removed);
    training loops install their own handler to save their progress first.
    """
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        app(prog_name="nerncompress")
    except SystemExit:
        raise
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - mapped to one line and an exit code
        sys.exit(report_error(exc))
