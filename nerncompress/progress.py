"""How long phases report progress and log lines without knowing who listens.

The library never prints. A job reports through a ``Reporter``: ``log(message)`` for a line, and
``phase(name, total)`` for a context that yields the ``on_step(step, total, metrics)`` callback a loop calls as it
goes. The CLI's reporter draws progress bars on stderr; the default, ``silent``, ignores everything. A call that runs
several phases one after another takes one callback per phase from :func:`sequential_phases`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

StepCallback = Callable[[int, int, dict[str, float]], None]


class Reporter(Protocol):
    """Receives the log lines and the progress of a job."""

    def log(self, message: str) -> None: ...

    def phase(self, name: str, total: int | None = None) -> contextlib.AbstractContextManager[StepCallback]:
        """A phase of ``total`` steps (None: of unknown length); yields its ``on_step`` callback."""
        ...


def _ignore_step(step: int, total: int, metrics: dict[str, float]) -> None:
    return None


class _Silent:
    """A reporter that drops everything: the library's default."""

    def log(self, message: str) -> None:
        return None

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[StepCallback]:
        yield _ignore_step


silent: Reporter = _Silent()


class _Sequence:
    def __init__(self, reporter: Reporter, stack: contextlib.ExitStack) -> None:
        self.reporter, self.stack = reporter, stack
        self.current: str | None = None
        self.on_step: StepCallback = _ignore_step

    def callback(self, name: str, total: int | None = None) -> StepCallback:
        def on_step(step: int, phase_total: int, metrics: dict[str, float]) -> None:
            if self.current != name:  # this phase starts: the one before it is over
                self.stack.close()
                self.on_step = self.stack.enter_context(self.reporter.phase(name, total or phase_total))
                self.current = name
            self.on_step(step, phase_total if total is None else total, metrics)

        return on_step


@contextlib.contextmanager
def sequential_phases(reporter: Reporter) -> Iterator[Callable[..., StepCallback]]:
    """Phases that one call runs one after another (``fit``: positions, then steps).

    Yields ``callback(name, total=None)``: the ``on_step`` of phase ``name``, which opens the phase on ``reporter`` at
    its first call and closes the phase before it (None total: the one the calls report). The last phase closes
    with the context.

    Example:
        >>> with sequential_phases(reporter) as phase:
        ...     fit(state_dict, on_positions=phase("positions"), on_step=phase("fit"))
    """
    with contextlib.ExitStack() as stack:
        yield _Sequence(reporter, stack).callback


def offset(on_step: StepCallback | None, start: int, total: int | None = None) -> StepCallback | None:
    """Report a sub-phase's steps after ``start`` steps of earlier ones, out of ``total`` (None: ``start`` + the
    sub-phase's own total, for a callback that later sub-phases shift again)."""
    if on_step is None:
        return None
    return lambda step, phase_total, metrics: on_step(
        start + step, start + phase_total if total is None else total, metrics
    )
