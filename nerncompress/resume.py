"""Interrupt-safe training: snapshots of a training loop's state, and ``--resume``.

A snapshot is a ``<output>.resume`` file next to the output: one safetensors container (never pickle) holding

    predictor/<param>          the predictor's parameters after the last completed step
    optimizer/<index>/<name>   the optimiser's per-parameter tensors (Adam: step, exp_avg, exp_avg_sq)
    rng/generator, rng/torch   the state of the loop's batch generator and of torch's global generator
    best/<param>               the best-so-far predictor of a loop with model selection (distill)
    round_start/<param>        the predictor that started the current round (fit --rounds > 1)
    positions/<layer>          the kernels' positions, when the loop moves them (fit's re-assignment)
    round_start_positions/<layer>  and the positions the current round started from (every round: a resumed
                               fit takes them instead of computing them again)
    average/<param>            the moving average of the predictor's weights (distill --ema)

and, in ``__metadata__`` (JSON strings), the step, the round, the optimiser's param groups, the best-so-far record,
the history of completed rounds and a fingerprint of the run (stage, config, inputs) that ``--resume`` must match.

A loop calls :meth:`Checkpointer.restore` before its first step and :meth:`Checkpointer.step_done` after each
step. A snapshot is taken only between steps, so a resumed run repeats exactly the steps an uninterrupted run
would take: with the same seed and device the final artifact has the same bytes. SIGINT and SIGTERM (see
:meth:`Checkpointer.signals`) only raise a flag; the loop saves at the end of the step it is in and raises
:class:`~nerncompress.errors.Interrupted`. A second signal stops at once, without saving.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._version import __version__
from ._io import PathLike
from .distributed import current, max_of
from .errors import CheckpointError, Interrupted, UsageError
from .safetensors_io import save_safetensors

RESUME_FORMAT = "nerncompress-resume"
RESUME_VERSION = 1
RESUME_SUFFIX = ".resume"
DEFAULT_EVERY_STEPS = 1000
DEFAULT_EVERY_SECONDS = 60.0


def resume_path(output: PathLike) -> Path:
    """Where the snapshots of a run writing ``output`` go: ``<output>.resume``, in the same folder."""
    out = Path(output)
    return out.with_name(out.name + RESUME_SUFFIX)


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


@dataclass
class LoopState:
    """What a training loop needs to continue exactly where it stopped.

    Attributes:
        step: steps completed.
        predictor: the predictor's state_dict.
        optimizer: the optimiser's state_dict.
        generator: state of the loop's ``torch.Generator`` (batch sampling, augmentation, noise).
        torch_rng: state of torch's global CPU generator.
        best: best-so-far record of a loop with model selection ({"step", "holdout_agreement"}), else None.
        best_predictor: the predictor state of ``best``.
        positions: the kernels' positions of a loop that moves them (fit's re-assignment), else None.
        average: the moving average of the predictor's weights of a loop that keeps one (distill's EMA), else None.
    """

    step: int
    predictor: dict[str, Tensor]
    optimizer: dict[str, Any]
    generator: Tensor
    torch_rng: Tensor
    best: dict[str, Any] | None = None
    best_predictor: dict[str, Tensor] | None = None
    positions: dict[str, Tensor] | None = None
    average: dict[str, Tensor] | None = None

    @classmethod
    def capture(
        cls,
        step: int,
        predictor: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        best: dict[str, Any] | None = None,
        best_predictor: dict[str, Tensor] | None = None,
        positions: dict[str, Tensor] | None = None,
        average: dict[str, Tensor] | None = None,
    ) -> LoopState:
        """The loop's state after ``step`` steps (references, not copies: save it before the next step)."""
        return cls(
            step=step,
            predictor=dict(predictor.state_dict()),
            optimizer=optimizer.state_dict(),
            generator=generator.get_state(),
            torch_rng=torch.get_rng_state(),
            best=dict(best) if best is not None else None,
            best_predictor=best_predictor,
            positions=dict(positions) if positions is not None else None,
            average=average,
        )

    def restore(self, predictor: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """Put this state back into a freshly built loop (``positions`` are the loop's to put back)."""
        predictor.load_state_dict(self.predictor)
        optimizer.load_state_dict(self.optimizer)
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)


@dataclass
class Snapshot:
    """A resume file's content: the run's fingerprint, the enclosing round and the loop's state."""

    fingerprint: dict[str, Any]
    round: int
    history: list[dict[str, Any]]
    round_start: dict[str, Tensor] | None
    loop: LoopState
    round_start_positions: dict[str, Tensor] | None = None


# ------------------------------------------------------------------------------------------------ file format
def write_snapshot(snapshot: Snapshot, path: PathLike) -> None:
    """Write a resume file atomically."""
    loop = snapshot.loop
    tensors: dict[str, Tensor] = {f"predictor/{k}": v for k, v in loop.predictor.items()}
    optimizer_meta: dict[str, Any] = {"param_groups": loop.optimizer["param_groups"], "state": {}}
    for index, entries in loop.optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                optimizer_meta["state"].setdefault(str(index), {})[name] = value
    tensors["rng/generator"] = loop.generator
    tensors["rng/torch"] = loop.torch_rng
    tensors.update({f"best/{k}": v for k, v in (loop.best_predictor or {}).items()})
    tensors.update({f"round_start/{k}": v for k, v in (snapshot.round_start or {}).items()})
    tensors.update({f"positions/{k}": v for k, v in (loop.positions or {}).items()})
    tensors.update({f"average/{k}": v for k, v in (loop.average or {}).items()})
    tensors.update({f"round_start_positions/{k}": v for k, v in (snapshot.round_start_positions or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": RESUME_FORMAT,
        "version": str(RESUME_VERSION),
        "tool_version": __version__,
        "fingerprint": json.dumps(snapshot.fingerprint, sort_keys=True),
        "round": str(snapshot.round),
        "step": str(loop.step),
        "history": json.dumps(snapshot.history, sort_keys=True),
        "best": json.dumps(loop.best),
        "optimizer": json.dumps(optimizer_meta),
        "has_best": json.dumps(loop.best_predictor is not None),
        "has_round_start": json.dumps(snapshot.round_start is not None),
    }
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    save_safetensors(tensors.items(), path, specs=specs, metadata=metadata)


def read_snapshot(path: PathLike) -> Snapshot:
    """Read a resume file written by :func:`write_snapshot`.

    Raises:
        CheckpointError: the file is unreadable, of another format or version, or inconsistent.
    """
    from safetensors import safe_open

    file = Path(path)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises several untyped errors on corrupt files
        raise CheckpointError(
            f"resume file {file} is unreadable ({type(exc).__name__}): delete it to start afresh"
        ) from exc
    if meta.get("format") != RESUME_FORMAT or meta.get("version") != str(RESUME_VERSION):
        raise CheckpointError(
            f"{file} is not a resume file of this nerncompress (format {meta.get('format')!r}, version "
            f"{meta.get('version')!r}): delete it to start afresh"
        )
    try:
        optimizer_meta = json.loads(meta["optimizer"])
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in optimizer_meta["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        has_best = json.loads(meta["has_best"])
        has_round_start = json.loads(meta["has_round_start"])
        loop = LoopState(
            step=int(meta["step"]),
            predictor=_group(tensors, "predictor/"),
            optimizer={"state": state, "param_groups": optimizer_meta["param_groups"]},
            generator=tensors["rng/generator"],
            torch_rng=tensors["rng/torch"],
            best=json.loads(meta["best"]),
            best_predictor=_group(tensors, "best/") if has_best else None,
            positions=_group(tensors, "positions/") or None,
            average=_group(tensors, "average/") or None,
        )
        return Snapshot(
            fingerprint=json.loads(meta["fingerprint"]),
            round=int(meta["round"]),
            history=json.loads(meta["history"]),
            round_start=_group(tensors, "round_start/") if has_round_start else None,
            loop=loop,
            round_start_positions=_group(tensors, "round_start_positions/") or None,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"resume file {file} is inconsistent ({exc!r}): delete it to start afresh") from exc


# ------------------------------------------------------------------------------------- stage snapshots (compress)
STAGES_FORMAT = "nerncompress-stages"


def write_stage_snapshot(
    path: PathLike, fingerprint: dict[str, Any], document: dict[str, Any], tensors: dict[str, Tensor]
) -> None:
    """Write the state of a job that advances in stages (``compress``'s search) atomically: a JSON ``document``
    and named tensors, with the run's fingerprint."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    metadata = {
        "format": STAGES_FORMAT, "version": str(RESUME_VERSION), "tool_version": __version__,
        "fingerprint": json.dumps(_json(fingerprint), sort_keys=True), "document": json.dumps(_json(document)),
    }  # fmt: skip
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    save_safetensors(tensors.items(), path, specs=specs, metadata=metadata)


def read_stage_snapshot(path: PathLike, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a stage snapshot written for the same run: ``(document, tensors)``.

    Raises:
        UsageError: no file, or one saved by a run with other settings or inputs.
        CheckpointError: the file is unreadable or of another format.
    """
    from safetensors import safe_open

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"resume: no resume file {file}: nothing to continue, start the run afresh")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if meta.get("format") != STAGES_FORMAT or meta.get("version") != str(RESUME_VERSION):
            raise ValueError(f"format {meta.get('format')!r}, version {meta.get('version')!r}")
        saved, document = json.loads(meta["fingerprint"]), json.loads(meta["document"])
    except Exception as exc:  # noqa: BLE001 - safetensors and json raise several untyped errors on corrupt files
        raise CheckpointError(f"resume file {file} is unreadable ({str(exc)[:120]}): delete it to start afresh") from exc
    difference = _first_difference(saved, _json(fingerprint))
    if difference is not None:
        raise UsageError(
            f"resume: {file} was saved by a run with a different {difference}: repeat the interrupted command "
            "exactly, or delete the file to start afresh"
        )
    return document, tensors


def _group(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """The dotted path of the first value that differs between two JSON-like documents, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = _first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if saved == current else (path or "run")


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------------ checkpointer
@contextlib.contextmanager
def route_stop_signals(on_signal: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``on_signal(name)`` ("SIGINT", "SIGTERM") instead of stopping
    the process; the previous handlers come back afterwards. Outside the main thread, where Python cannot install
    handlers, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: on_signal(signal.Signals(signum).name))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_if_signalled(name: str | None, resume_file: PathLike, *, after: str) -> None:
    """Raise ``Interrupted`` for a signal ``name`` that arrived after a loop's last check (``after``: when), so that
    the run stops before its output is written; the message says whether ``resume_file`` holds something to resume."""
    if name:
        saved = "--resume continues from the last save" if Path(resume_file).exists() else "nothing was saved"
        raise Interrupted(f"interrupted by {name} {after}, before the output was written: {saved}")


class Checkpointer:
    """Saves a training run's progress to ``path`` and, with ``resume=True``, continues a saved run.

    Args:
        path: the resume file (see :func:`resume_path`).
        resume: continue from ``path`` (it must exist and match the run).
        every_steps: save every this many steps (0: only on a signal).
        every_seconds: also save when this many seconds passed since the last save (0: never).
        identity: extra fields the run's fingerprint must match (e.g. input file hashes).
        log: where to report saves and resumes (one line each).

    Use: wrap the training call in :meth:`signals`; ``fit``/``distill`` take the checkpointer as ``checkpointer=``
    and call :meth:`start`, :meth:`begin_round`, :meth:`restore` and :meth:`step_done`. Delete the file with
    :meth:`discard` once the output is written.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        resume: bool = False,
        every_steps: int = DEFAULT_EVERY_STEPS,
        every_seconds: float = DEFAULT_EVERY_SECONDS,
        identity: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if every_steps < 0 or every_seconds < 0:
            raise UsageError(f"checkpoint intervals must be >= 0, got {every_steps} steps, {every_seconds} s")
        self.path = Path(path)
        self.resume = resume
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.identity = _json(identity or {})
        self.log = log or (lambda message: None)
        self.stop_requested: str | None = None  # the name of the signal received
        self.saves = 0
        self.fingerprint: dict[str, Any] = {}
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.round_start: dict[str, Tensor] | None = None
        self.round_start_positions: dict[str, Tensor] | None = None
        self._pending: LoopState | None = None
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------------------------ set up by fit/distill
    def start(self, stage: str, settings: dict[str, Any]) -> Snapshot | None:
        """Bind the run's fingerprint; with ``resume``, read the saved snapshot (None for a fresh start).

        Raises:
            UsageError: ``resume`` without a resume file, or a file saved by a run with other settings or inputs.
            CheckpointError: the file is corrupt.
        """
        self.fingerprint = _json({"stage": stage, **settings, **self.identity})
        self._last_save = time.monotonic()
        if not self.resume:
            return None
        if not self.path.is_file():
            raise UsageError(f"resume: no resume file {self.path}: nothing to continue, start the run afresh")
        snapshot = read_snapshot(self.path)
        difference = _first_difference(snapshot.fingerprint, self.fingerprint)
        if difference is not None:
            raise UsageError(
                f"--resume: {self.path} was saved by a run with a different {difference}: repeat the interrupted "
                "command exactly, or delete the file to start afresh"
            )
        self._pending = snapshot.loop
        self.log(f"resuming from {self.path} (round {snapshot.round + 1}, step {snapshot.loop.step})")
        return snapshot

    def begin_round(
        self,
        round_index: int,
        history: list[dict[str, Any]],
        predictor: nn.Module | None,
        positions: dict[str, Tensor] | None = None,
    ) -> None:
        """Record what a snapshot of this round must also hold: its index, the history so far, its start state
        (the predictor of a later round, and when given, the kernels' positions: a resumed run takes them from the
        snapshot instead of computing them again, and a later round's targets are regenerated from them)."""
        self.round = round_index
        self.history = _json(history)
        later = round_index > 0
        self.round_start = _copy(predictor.state_dict()) if predictor is not None and later else None
        self.round_start_positions = _copy(positions) if positions is not None else None

    # ------------------------------------------------------------------------------------------- in the loops
    def restore(
        self, predictor: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> LoopState | None:
        """Load the saved loop state (once, into the first loop that asks) and return it; None on a fresh start."""
        state, self._pending = self._pending, None
        if state is not None:
            state.restore(predictor, optimizer, generator)
        return state

    def step_done(self, step: int, total: int, capture: Callable[[], LoopState]) -> None:
        """Called after each step: save when due or when a signal arrived; then stop for a signal.

        Nothing is saved after the last step: the loop ends and its caller writes the result. In a data-parallel
        run every rank calls this after every step: the ranks agree on whether any received a signal, all stop
        after the same step, and only rank 0 writes the file.

        Raises:
            Interrupted: a signal arrived (after saving).
        """
        if step >= total:
            return
        world = current()
        if world.distributed:
            received = max_of(signal.Signals[self.stop_requested].value if self.stop_requested else 0, world)
            if received and not self.stop_requested:
                self.stop_requested = signal.Signals(received).name
        due = (self.every_steps > 0 and step % self.every_steps == 0) or (
            self.every_seconds > 0 and time.monotonic() - self._last_save >= self.every_seconds
        )
        if due or self.stop_requested:
            self.save(capture())
        if self.stop_requested:
            raise Interrupted(
                f"interrupted by {self.stop_requested} at step {step}/{total}"
                f"{f' of round {self.round + 1}' if self.round else ''}: progress saved to {self.path}; "
                "run the same command with --resume to continue"
            )

    def save(self, loop: LoopState) -> None:
        """Write a snapshot of ``loop`` in the current round (atomically: a killed save keeps the previous one).

        In a data-parallel run only rank 0 writes (every rank holds the same state)."""
        if not current().main:
            return
        snapshot = Snapshot(
            self.fingerprint, self.round, self.history, self.round_start, loop, self.round_start_positions
        )
        write_snapshot(snapshot, self.path)
        self.saves += 1
        self._last_save = time.monotonic()

    def discard(self) -> None:
        """Delete the resume file (the run's output is written; rank 0's to do in a data-parallel run)."""
        if not current().main:
            return
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def signals(self) -> Iterator[Checkpointer]:
        """Turn SIGINT and SIGTERM into a request to save and stop after the current step.

        A second signal raises ``KeyboardInterrupt`` at once (no save), except in a data-parallel run: there the
        launcher passes the user's signal on to its workers, which may then see it twice, and every rank must reach
        the end of the step to agree on stopping. Outside the main thread, where Python cannot install handlers,
        this does nothing.
        """

        def on_signal(name: str) -> None:
            if self.stop_requested:
                if current().distributed:
                    return
                raise KeyboardInterrupt(f"{name} received twice: stopped without saving")
            self.stop_requested = name

        with route_stop_signals(on_signal):
            yield self
        stop_if_signalled(self.stop_requested, self.path, after="after the last step")
