"""Data-parallel runs over ``torch.distributed``: joining a process group, the collectives a training loop needs,
and launching N local worker processes (``distill --nproc N``).

Two ways in, one code path:

* ``torchrun --nproc_per_node N -m nerncompress distill ...``: torchrun starts N copies of the command with
  ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``... set; the job joins the group with :func:`process_group`.
* ``launch(fn, kwargs, nproc=N)``: the same through torch's elastic launcher API (what ``torch.distributed.run``
  uses), in this process, without a ``torchrun`` binary. ``fn(**kwargs)`` runs in every worker; rank 0's return
  value comes back, its log lines and progress are forwarded to the caller's :class:`Reporter`, and the first error
  raised on any rank is raised again here (every rank is then stopped by the launcher: no rank waits on a dead one).

Every rank holds the same predictor: the same seeds, the same random draws (made for the whole global batch on
every rank, then sharded), and gradients averaged with one all-reduce per step. Only rank 0 writes files and
reports; the others are silent. The process group has a timeout, so a rank that stops answering ends the run with
an error instead of a hang.

A foundation module: it imports nothing of nerncompress but ``errors`` and ``progress``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from .errors import Interrupted, NernError, UsageError
from .progress import Reporter, StepCallback

DEFAULT_TIMEOUT_SECONDS = 300.0
"""How long a collective (and joining the group) may wait for the other ranks before the run fails."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: ``rank`` of ``size`` (0 of 1 outside one)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one rank that writes files and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items: ``ceil(count / size)`` each, the last ones shorter."""
        per = -(-count // self.size)
        start = min(count, self.rank * per)
        return slice(start, min(count, start + per))


def current() -> World:
    """The world of the process group this process has joined (``World()`` when none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return World()


def launched_world() -> World:
    """The world a launcher (torchrun, :func:`launch`) started this process in, read from its environment."""
    try:
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return World()


def process_rank() -> int:
    """This process's rank in a run a launcher (torchrun, ``distill --nproc``) started; 0 outside one. Callers
    that print (the CLI) stay silent on the other ranks."""
    return launched_world().rank


def check_divisible(batch_size: int, size: int) -> None:
    """A global batch is split into equal shards, so that the mean over the shards is the mean over the batch.

    Raises:
        UsageError: naming ``batch_size`` and the number of processes.
    """
    if size > 1 and batch_size % size:
        raise UsageError(
            f"batch_size must be divisible by the number of processes ({size}), got {batch_size}: "
            f"use a multiple of {size}, e.g. {max(size, batch_size - batch_size % size)}"
        )


def check_devices(device: torch.device, size: int) -> None:
    """On CUDA, every process needs a GPU of its own (nccl refuses two ranks on one).

    Raises:
        UsageError: more processes than GPUs, naming ``nproc`` and ``device``.
    """
    if device.type == "cuda" and size > 1 and device.index is None and size > torch.cuda.device_count():
        raise UsageError(
            f"nproc must be at most the number of CUDA devices ({torch.cuda.device_count()}) with device cuda, got "
            f"{size}: give fewer processes, or device cpu"
        )


def rank_device(device: torch.device, world: World) -> torch.device:
    """One CUDA device per local rank; other devices as given."""
    if device.type == "cuda" and world.distributed and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", world.rank)) % max(1, torch.cuda.device_count()))
    return device


@contextlib.contextmanager
def process_group(device: torch.device, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Iterator[World]:
    """Join the process group the launcher started (gloo on the CPU, nccl on CUDA) for the block, then leave it.

    Outside a launched run (``WORLD_SIZE`` unset or 1), or when a group is already joined, this does nothing.
    """
    launched = launched_world()
    if not launched.distributed or not torch.distributed.is_available() or torch.distributed.is_initialized():
        yield current()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, launched))
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout))
    try:
        yield current()
    finally:
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------- collectives
def average_gradients(parameters: Iterable[torch.nn.Parameter], world: World) -> None:
    """Replace every gradient by its mean over the ranks (one all-reduce of all of them, flattened)."""
    if not world.distributed:
        return
    parameters = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(world.size)
    start = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        count = grad.numel()
        parameter.grad = flat[start : start + count].view_as(grad).to(grad.dtype)
        start += count


def mean_of(values: Tensor, world: World) -> Tensor:
    """The mean over the ranks of a float tensor (the tensor itself outside a run)."""
    if not world.distributed:
        return values
    total = values.detach().float().clone()
    torch.distributed.all_reduce(total)
    return total / world.size


def max_of(value: int, world: World) -> int:
    """The largest of an integer over the ranks (e.g. a signal number: did any rank receive one?)."""
    if not world.distributed:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def gather_rows(local: Tensor, count: int, world: World) -> Tensor:
    """Every rank's ``local`` rows (its :meth:`World.shard` of ``count``), concatenated in rank order, on every rank."""
    if not world.distributed:
        return local
    per = -(-count // world.size)
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    torch.distributed.all_gather(parts, padded)
    rows = [part[: len(range(count)[World(rank, world.size).shard(count)])] for rank, part in enumerate(parts)]
    return torch.cat(rows)


def _nccl() -> bool:
    return torch.distributed.get_backend() == "nccl"


# ------------------------------------------------------------------------------------------------- launching
class _ForwardingReporter:
    """Rank 0's reporter in a launched worker: sends log lines and progress to the launching process."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def log(self, message: str) -> None:
        self.channel.put(("log", message))

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[StepCallback]:
        self.channel.put(("phase", name, total))

        def on_step(step: int, phase_total: int, metrics: dict[str, float]) -> None:
            self.channel.put(("step", step, phase_total, dict(metrics)))

        try:
            yield on_step
        finally:
            self.channel.put(("end",))


def _worker(fn: Callable[..., Any], kwargs: dict[str, Any], channel: Any) -> Any:
    """What every launched process runs: ``fn(**kwargs, reporter=...)``; an error is sent to the launcher first."""
    world = launched_world()
    try:
        reporter = _ForwardingReporter(channel) if world.main else None
        return fn(**kwargs, reporter=reporter) if reporter is not None else fn(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the launcher, then ends the process
        channel.put(("error", world.rank, _picklable(exc)))
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that does not survive pickling is sent as its message
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _pump(channel: Any, reporter: Reporter, errors: list[tuple[int, BaseException]]) -> None:
    """Replay the workers' messages on the caller's reporter until ``("stop",)``."""
    phases: list[tuple[contextlib.AbstractContextManager[StepCallback], StepCallback]] = []
    while True:
        message = channel.get()
        kind = message[0]
        if kind == "stop":
            break
        if kind == "log":
            reporter.log(message[1])
        elif kind == "phase":
            context = reporter.phase(message[1], message[2])
            phases.append((context, context.__enter__()))
        elif kind == "step" and phases:
            phases[-1][1](message[1], message[2], message[3])
        elif kind == "end" and phases:
            phases.pop()[0].__exit__(None, None, None)
        elif kind == "error":
            errors.append((message[1], message[2]))
    while phases:
        phases.pop()[0].__exit__(None, None, None)


def launch(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    nproc: int,
    reporter: Reporter,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Any:
    """Run ``fn(**kwargs)`` in ``nproc`` local processes started by torch's elastic launcher; return rank 0's result.

    ``fn`` must be importable by name (a module-level function) and ``kwargs`` picklable: the workers are spawned.
    Rank 0 gets ``reporter=`` a reporter that forwards to ``reporter`` here; the other ranks get none. The
    rendezvous picks a free port on 127.0.0.1. When a rank fails, the launcher stops the others and the first
    error raised on any rank is raised here.

    Raises:
        UsageError: ``nproc`` < 1.
        NernError: a rank failed without telling why (killed, out of memory).
    """
    if nproc < 1:
        raise UsageError(f"nproc must be >= 1, got {nproc}")
    import multiprocessing

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"nerncompress-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_configs={"timeout": int(timeout)},
        max_restarts=0, monitor_interval=0.1, start_method="spawn", local_addr="127.0.0.1",
    )  # fmt: skip
    channel = multiprocessing.get_context("spawn").Queue()
    errors: list[tuple[int, BaseException]] = []
    pump = threading.Thread(target=_pump, args=(channel, reporter, errors), daemon=True)
    pump.start()
    # the launcher's warnings and failure tables are not ours to print
    levels = {**_quiet_loggers("torch.distributed"), **_quiet_loggers("torch.multiprocessing")}
    failure: BaseException | None = None
    handlers = _signal_handlers()  # the launcher installs its own and leaves them: put ours back afterwards
    try:
        results = elastic_launch(config, _worker)(fn, kwargs, channel)
    except (ChildFailedError, Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the rank's own error wins
        failure, results = exc, {}
    finally:
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(signum, handler)
        for logger, level in levels.items():
            logger.setLevel(level)
        channel.put(("stop",))
        pump.join(timeout=30)
        with contextlib.suppress(Exception):
            channel.close()
    if errors:
        raise errors[0][1]
    if failure is not None:
        if isinstance(failure, KeyboardInterrupt) or type(failure).__name__ == "SignalException":
            name = getattr(getattr(failure, "sigval", None), "name", "SIGINT")
            raise Interrupted(f"interrupted by {name} before the workers started training: nothing saved") from None
        raise NernError(f"a worker process failed without an error message ({_one_line(failure)})") from failure
    return results[0]


def _quiet_loggers(prefix: str) -> dict[logging.Logger, int]:
    """Raise every logger under ``prefix`` to CRITICAL; return their levels, to put back."""
    names = [prefix] + [name for name in logging.root.manager.loggerDict if name.startswith(prefix + ".")]
    loggers = [logging.getLogger(name) for name in names]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    return levels


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    return {sig: signal.getsignal(sig) for sig in (getattr(signal, name) for name in names if hasattr(signal, name))}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)



def barrier(world: World) -> None:
    """Wait until every rank got here (nothing outside a run)."""
    if world.distributed:
        torch.distributed.barrier()
