"""The accuracy gate: the fidelity a result must reach against its reference, judged on measured figures.

A job that evaluates (``eval --compare``, ``distill`` on its held-out images, ``compress``) takes a gate and puts its
verdict in its summary; ``enforce_gate`` turns a missed target into ``AccuracyTargetMissed`` (CLI exit code 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AccuracyTargetMissed, UsageError


@dataclass(frozen=True)
class AccuracyGate:
    """The fidelity a result must reach against its reference (usually the original model).

    Attributes:
        min_agreement: least share of images, in percent, on which both predict the same class (None: no bound).
        max_drop: most top-1 points the result may lose against the reference (None: no bound).
    """

    min_agreement: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.min_agreement is None and self.max_drop is None:
            raise UsageError("an accuracy gate needs min_agreement or max_drop")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise UsageError(f"min_agreement is a percentage in [0, 100], got {self.min_agreement}")
        if self.max_drop is not None and not self.max_drop >= 0.0:
            raise UsageError(f"max_drop is a number of top-1 points >= 0, got {self.max_drop}")

    def check(self, agreement: float | None, drop: float | None, *, on: str) -> dict[str, Any]:
        """Judge measured figures.

        Args:
            agreement: percent of equal predictions; None when not measured.
            drop: top-1 of the reference minus top-1 of the result, in points (positive = a loss); None when not
                measured (a bound on an unmeasured figure fails).
            on: what the figures were measured on, for the message.

        Returns:
            ``min_agreement``, ``max_drop``, ``agreement``, ``drop``, ``on``, ``passed`` and ``message`` (one line).
        """
        missed = []
        if self.min_agreement is not None and (agreement is None or agreement < self.min_agreement):
            figure = "not measured" if agreement is None else f"{agreement:.2f}%"
            missed.append(f"agreement {figure} < {self.min_agreement:g}%")
        if self.max_drop is not None and (drop is None or drop > self.max_drop):
            figure = "not measured" if drop is None else f"{drop:.2f} points"
            missed.append(f"top-1 drop {figure} > {self.max_drop:g}")
        verdict = "missed" if missed else "met"
        detail = "; ".join(missed) if missed else _figures(agreement, drop)
        return {
            "min_agreement": self.min_agreement,
            "max_drop": self.max_drop,
            "agreement": agreement,
            "drop": drop,
            "on": on,
            "passed": not missed,
            "message": f"accuracy target {verdict} on {on}: {detail}",
        }


def _figures(agreement: float | None, drop: float | None) -> str:
    parts = [] if agreement is None else [f"agreement {agreement:.2f}%"]
    parts += [] if drop is None else [f"top-1 drop {drop:.2f} points"]
    return ", ".join(parts)


def enforce_gate(summary: Mapping[str, Any]) -> None:
    """Raise :class:`AccuracyTargetMissed` when a job's summary holds a gate that did not pass.

    Raises:
        AccuracyTargetMissed: with the gate's one-line message (the job's output is already written).
    """
    gate = summary.get("gate")
    if gate is not None and not gate["passed"]:
        raise AccuracyTargetMissed(gate["message"])
