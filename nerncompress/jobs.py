"""Jobs: what each command does, as one library call a Python user can make too.

Each ``run_*`` function takes paths and a config, checks every input before any work (output path, files,
architecture, data, teacher), runs the work with progress on a ``Reporter``, writes its output atomically, and
returns the summary dict that the CLI renders. ``load_model`` and ``load_datasets`` are the loading steps the
jobs share. Jobs that evaluate take an ``AccuracyGate``: the summary says whether it passed, and the caller
decides what a miss means (the CLI exits 3).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import PathLike, atomic_path, check_output_path, check_writable_folder, sha256_file
from .artifact import is_nern_file, load_artifact, save_artifact
from .checkpoint import load_checkpoint
from .coding import CodeConfig, Stages, code_checkpoint
from .compression import PruneConfig, QuantizeConfig, compress
from .devices import resolve_device
from .distributed import barrier, check_devices, check_divisible, launch, launched_world, process_group, rank_device
from .distributed import current as current_world
from .data import ImageData, concat_data, load_data, preset_stats, split_holdout, to_float
from .image_folder import DEFAULT_WORKERS
from .distillation import DistillConfig, check_distillable, check_teacher, distill
from .errors import UsageError
from .evaluation import evaluate, most_faithful
from .gate import AccuracyGate
from .exporter import check_export_path, export
from .models import ArchSpec, build_model, check_arch, resolve_arch
from .nern import check_shapes, expand_model
from .progress import Reporter, sequential_phases, silent
from .report import (
    artifact_report,
    checkpoint_report,
    code_summary,
    compare_results,
    compress_summary,
    distill_summary,
    fit_summary,
    source_provenance,
)
from .resume import DEFAULT_EVERY_STEPS, Checkpointer, resume_path
from .training import FitConfig, fit

__all__ = [
    "load_datasets",
    "load_model",
    "run_compress",
    "run_compress_predictor",
    "run_distill",
    "run_eval",
    "run_expand",
    "run_fit",
    "run_inspect",
    "run_select",
]


# ----------------------------------------------------------------------------------------------------- loading
def load_model(
    path: PathLike,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
    device: str = "auto",
) -> tuple[nn.Module, ArchSpec]:
    """A model from a checkpoint (architecture from ``arch`` or detected) or a ``.nern`` (expanded in memory).

    Args:
        path: a checkpoint or a .nern.
        arch: architecture of a checkpoint; None detects it. Ignored for a .nern, which records its own.
        trust_pickle: as in ``load_checkpoint``.
        trust_code: as in ``load_artifact``: a .nern naming a user builder is built only when trusted.
        device: where a .nern's predictor runs while expanding.

    Returns:
        ``(model in eval mode on the CPU, its ArchSpec)``.
    """
    if is_nern_file(path):
        nern = load_artifact(path, trust_code=trust_code)
        check_shapes(nern)
        return expand_model(nern, device=device), nern.arch
    state_dict = load_checkpoint(path, trust_pickle=trust_pickle)
    spec = resolve_arch(arch, state_dict)
    return build_model(spec, state_dict), spec


def load_datasets(
    specs: Sequence[str],
    *,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
) -> ImageData | None:
    """Datasets given as ``--data`` values, concatenated in order; None for ``noise`` (data-free). ``split``,
    ``workers`` and ``image_size`` as in ``load_data``."""
    if "noise" in specs:
        if len(specs) > 1:
            raise UsageError("data 'noise' (data-free) cannot be combined with datasets: give one or the other")
        return None
    return concat_data(*(load_data(spec, split=split, workers=workers, image_size=image_size) for spec in specs))


def check_images(model: nn.Module, data: ImageData | None, preset: str) -> None:
    """The model must take the images (channels, size) before any work starts."""
    if data is None:
        return
    mean, std = preset_stats(preset)
    try:
        with torch.no_grad():
            model.eval()(to_float(data.images[:1], mean=mean, std=std))
    except (RuntimeError, UsageError) as exc:
        c, h, w = data.image_shape
        detail = " ".join(str(exc).split())[:200]
        raise UsageError(f"the model cannot take the images of {data.source} ({c}x{h}x{w}): {detail}") from exc


def check_output(target: PathLike, *inputs: PathLike | None) -> Path:
    """Refuse, before any work, an output over an input, a folder as output, or a missing or unwritable folder."""
    target = Path(target)
    check_output_path(target, *inputs)
    if target.is_dir():
        raise UsageError(f"output {target} is a folder: give a file name")
    return check_writable_folder(target)


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Torch's CPU threads for the job (None leaves torch's setting), restored afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def peak_rss_mb() -> float | None:
    """The peak resident memory of this process so far, in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _checkpointer(
    target: Path, *, resume: bool, every: int, reporter: Reporter, identity: dict | None = None
) -> Checkpointer:
    """Snapshots of the run in ``<output>.resume``: every ``every`` steps (and 60 s), and on Ctrl-C/SIGTERM."""
    path = resume_path(target)
    if resume and not path.is_file():
        raise UsageError(f"resume: no resume file {path}: nothing to continue, run without resume")
    if not resume and path.is_file():
        reporter.log(f"note: {path} holds an interrupted run; resume it to continue (this run starts afresh)")
    return Checkpointer(
        path, resume=resume, every_steps=every, every_seconds=60.0 if every else 0.0, identity=identity,
        log=reporter.log,
    )  # fmt: skip


def _images(data: ImageData | None) -> str:
    return "noise" if data is None else f"{data.source} ({len(data)} images)"


# --------------------------------------------------------------------------------------------------------- fit
def run_fit(
    checkpoint: PathLike,
    config: FitConfig | None = None,
    *,
    output: PathLike | None = None,
    arch: str | None = None,
    data: Sequence[str] | None = None,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    device: str = "auto",
    threads: int | None = None,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_EVERY_STEPS,
    trust_pickle: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Fit a checkpoint into a ``.nern`` (see ``training.fit``) and write it.

    Args:
        checkpoint: the trained model's weights.
        config: the recipe (default ``FitConfig()``).
        output: the .nern to write; default: the checkpoint's name with the suffix .nern, in the current folder.
        arch: the architecture; None detects it.
        data: images of ``scheme="nern"`` (dataset specs, or ``["noise"]``).
        split: split of each dataset.
        workers, image_size: threads that decode an ImageFolder tree's images, and the size they come out at (as
            in ``load_data``).
        device, threads: where and with how many CPU threads to run.
        resume: continue the run saved in ``<output>.resume``.
        checkpoint_every: steps between snapshots (0: only on Ctrl-C/SIGTERM).
        trust_pickle: as in ``load_checkpoint``.
        reporter: progress and log lines.

    Returns:
        ``report.fit_summary`` of the written file.
    """
    config = config or FitConfig()
    checkpoint = Path(checkpoint)
    target = check_output(output or Path(checkpoint.name).with_suffix(".nern"), checkpoint, *(data or []))
    if data and config.scheme != "nern":
        raise UsageError("data is used by scheme 'nern' only: choose that scheme or give no data")
    state_dict = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    spec = resolve_arch(arch, state_dict)
    model = build_model(spec, state_dict)  # keys and shapes fit the architecture: fail now, not after the log
    dataset = load_datasets(data, split=split, workers=workers, image_size=image_size) if data else None
    if config.scheme == "nern":
        check_images(model, dataset, spec.preset)
    source = source_provenance(checkpoint, state_dict)
    checkpointer = _checkpointer(target, resume=resume, every=checkpoint_every, reporter=reporter)
    reporter.log(f"fitting {checkpoint} ({source['tensors']} tensors, {spec.name}) -> {target}")
    started = time.perf_counter()
    with _threads(threads), sequential_phases(reporter) as phase:
        with checkpointer.signals():
            nern = fit(
                state_dict, config, arch=spec, device=device, on_step=phase("fit", config.iters * config.rounds),
                source=source, data=dataset, checkpointer=checkpointer, on_positions=phase("positions"),
                on_measure=phase("reconstruction error"),
            )  # fmt: skip
        threads_used = torch.get_num_threads()
    seconds = time.perf_counter() - started
    save_artifact(nern, target)
    checkpointer.discard()
    return {**fit_summary(nern, target, seconds=seconds), "threads": threads_used, "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------------------------------- distill
def run_distill(
    nern_path: PathLike,
    *,
    teacher: PathLike,
    data: Sequence[str],
    config: DistillConfig | None = None,
    output: PathLike | None = None,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    teacher_arch: str | None = None,
    gate: AccuracyGate | None = None,
    device: str = "auto",
    threads: int | None = None,
    nproc: int = 1,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_EVERY_STEPS,
    trust_pickle: bool = False,
    trust_code: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Distill a ``.nern`` from a teacher (see ``distillation.distill``) and write the result.

    Data-parallel (see ``distributed.py``): with ``nproc`` > 1 the job runs in that many local processes started
    by torch's elastic launcher (gloo on the CPU, nccl on CUDA), each training on an equal shard of every batch of
    ``config.batch_size`` images; run under ``torchrun`` it joins the launcher's processes the same way. The file
    written is the one process would write with the same batch size and seed, within float rounding. Only rank 0
    writes the output and the resume file and reports; a resume file is read by every rank.

    Args:
        nern_path: the fitted .nern.
        teacher: the original checkpoint, or a stronger model of the same task (a checkpoint or a .nern).
        data: dataset specs (concatenated), or ``["noise"]`` for data-free distillation.
        config: the recipe (default ``DistillConfig()``).
        output: default: the input's name with the suffix .distilled.nern, in the current folder.
        gate: fidelity the result must reach on the held-out training images (agreement with the teacher, drop
            of top-1 against it); needs real data and a holdout.
        nproc: processes of a data-parallel run (1: this process alone, or the processes torchrun started);
            ``config.batch_size`` must divide by it. Without ``threads``, each process takes an equal share of the
            CPU cores.
        teacher_arch, split, workers, image_size, device, threads, resume, checkpoint_every, trust_pickle,
            trust_code, reporter: as in ``run_fit`` and ``load_model``.

    Returns:
        ``report.distill_summary`` of the written file, with ``gate`` when one was given, ``threads`` (per
        process) and ``processes``.
    """
    config = config or DistillConfig()
    nern_path, teacher = Path(nern_path), Path(teacher)
    launched = launched_world()
    if nproc < 1:
        raise UsageError(f"nproc must be >= 1, got {nproc}")
    if nproc > 1 and launched.distributed:
        raise UsageError(
            f"nproc: this process is already one of {launched.size} started by a launcher (torchrun): give nproc 1"
        )
    check_divisible(config.batch_size, max(nproc, launched.size))
    if not data:
        raise UsageError("distill needs data: dataset specs, or 'noise' for data-free distillation")
    if gate is not None and ("noise" in data or config.holdout <= 0):
        raise UsageError("an accuracy gate on distill scores the held-out training images: give real data and holdout > 0")
    target = check_output(output or Path(f"{nern_path.stem}.distilled.nern"), nern_path, teacher, *data)
    if nproc > 1:
        check_devices(resolve_device(device), nproc)
        reporter.log(f"starting {nproc} processes, {config.batch_size // nproc} images of each batch apiece")
        kwargs = {
            "nern_path": nern_path, "teacher": teacher, "data": list(data), "config": config, "output": target,
            "split": split, "workers": workers, "image_size": image_size, "teacher_arch": teacher_arch, "gate": gate,
            "device": device,
            "threads": threads if threads is not None else max(1, (os.cpu_count() or 1) // nproc), "resume": resume,
            "checkpoint_every": checkpoint_every, "trust_pickle": trust_pickle, "trust_code": trust_code,
        }  # fmt: skip
        return launch(run_distill, kwargs, nproc=nproc, reporter=reporter)
    check_devices(resolve_device(device), max(nproc, launched.size))
    with process_group(resolve_device(device)) as world:
        if not world.main:
            reporter = silent
        return _distill_here(
            nern_path, teacher, data, config, target, split=split, workers=workers, image_size=image_size,
            teacher_arch=teacher_arch, gate=gate,
            device=str(rank_device(resolve_device(device), world)), threads=threads, resume=resume,
            checkpoint_every=checkpoint_every, trust_pickle=trust_pickle, trust_code=trust_code, reporter=reporter,
        )  # fmt: skip


def _distill_here(
    nern_path: Path,
    teacher: Path,
    data: Sequence[str],
    config: DistillConfig,
    target: Path,
    *,
    split: str,
    workers: int,
    image_size: int | tuple[int, int] | None,
    teacher_arch: str | None,
    gate: AccuracyGate | None,
    device: str,
    threads: int | None,
    resume: bool,
    checkpoint_every: int,
    trust_pickle: bool,
    trust_code: bool,
    reporter: Reporter,
) -> dict[str, Any]:
    """``run_distill`` in this process: alone, or as one rank of a data-parallel run (its group joined)."""
    world = current_world()
    nern = load_artifact(nern_path, trust_code=trust_code)
    check_distillable(nern)  # before loading the teacher and the data
    check_arch(nern.arch)
    teacher_model, teacher_spec = load_model(
        teacher, arch=teacher_arch, trust_pickle=trust_pickle, trust_code=trust_code, device="cpu"
    )
    check_teacher(nern, teacher_model)
    dataset = load_datasets(data, split=split, workers=workers, image_size=image_size)
    check_images(teacher_model, dataset, nern.arch.preset)
    teacher_source = {**source_provenance(teacher, teacher_model.state_dict()), "arch": teacher_spec.name}
    checkpointer = _checkpointer(
        target, resume=resume, every=checkpoint_every, reporter=reporter,
        identity={"input_sha256": sha256_file(nern_path)},
    )  # fmt: skip
    reporter.log(f"distilling {nern_path} from teacher {teacher} on {_images(dataset)} -> {target}")
    started = time.perf_counter()
    with _threads(threads), reporter.phase("distill", total=config.iters) as on_step, checkpointer.signals():
        nern = distill(
            nern, teacher_model, dataset, config, device=device, on_step=on_step, teacher_source=teacher_source,
            checkpointer=checkpointer,
        )  # fmt: skip
        threads_used = torch.get_num_threads()
    seconds = time.perf_counter() - started
    if world.main:
        save_artifact(nern, target)
    checkpointer.discard()
    barrier(world)  # the other ranks read the written file's size for the summary
    summary = {**distill_summary(nern, target, seconds=seconds), "threads": threads_used, "processes": world.size}
    summary["peak_rss_mb"] = peak_rss_mb()
    if gate is not None:
        drop = summary.get("holdout_drop")
        summary["gate"] = gate.check(summary["holdout_agreement"], drop, on="held-out training images")
    return summary


# ----------------------------------------------------------------------------------------------------- compress
def run_compress(
    checkpoint: PathLike,
    config: CodeConfig | None = None,
    *,
    output: PathLike | None = None,
    arch: str | None = None,
    data: Sequence[str] | None = None,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    gate: AccuracyGate | None = None,
    device: str = "auto",
    threads: int | None = None,
    resume: bool = False,
    trust_pickle: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Code a checkpoint into a ``.nern`` (see ``coding.code_checkpoint``): with training images and a gate, the
    smallest file that meets the gate on held-out training images; without images (or with ``["noise"]``), the
    data-free codec at the configured step.

    Args:
        checkpoint: the trained model's weights.
        config: the recipe (default ``CodeConfig()``).
        output: the .nern to write; default: the checkpoint's name with the suffix .nern, in the current folder.
        arch: the architecture; None detects it.
        data: dataset specs (concatenated), ``["noise"]`` or None (data-free).
        split, workers, image_size: as in ``run_fit``.
        gate: the fidelity to reach against the original on the held-out training images. When no candidate
            meets it, the closest one is written and the summary's ``gate`` says so.
        resume: continue the search saved in ``<output>.resume`` (saved after every stage; Ctrl-C or SIGTERM stop
            the run within a fine-tuning step, keeping the last completed stage).
        device, threads, trust_pickle, reporter: as in ``run_fit``.

    Returns:
        ``report.code_summary`` of the written file, with ``gate`` when one was given.
    """
    config = config or CodeConfig()
    checkpoint = Path(checkpoint)
    target = check_output(output or Path(checkpoint.name).with_suffix(".nern"), checkpoint, *(data or []))
    state_dict = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    spec = resolve_arch(arch, state_dict)
    model = build_model(spec, state_dict)
    dataset = load_datasets(data, split=split, workers=workers, image_size=image_size) if data else None
    if gate is not None and dataset is None:
        raise UsageError("an accuracy gate on compress scores held-out training images: give data (not noise)")
    check_images(model, dataset, spec.preset)
    source = source_provenance(checkpoint, state_dict)
    fingerprint = {
        "stage": "compress", "config": config.to_dict(), "source": source, "arch": spec.to_dict(),
        "data": None if dataset is None else dataset.source,
        "gate": None if gate is None else {"min_agreement": gate.min_agreement, "max_drop": gate.max_drop},
    }  # fmt: skip
    path = resume_path(target)
    if not resume and path.is_file():
        reporter.log(f"note: {path} holds an interrupted run; resume it to continue (this run starts afresh)")
    stages = Stages(path, fingerprint, resume=resume, log=reporter.log)
    reporter.log(f"compressing {checkpoint} ({spec.name}) on {_images(dataset) if dataset else 'no data'} -> {target}")
    started = time.perf_counter()
    with _threads(threads), stages.signals():
        nern, record = code_checkpoint(
            state_dict, config, arch=spec, data=dataset, target=gate, device=device, reporter=reporter, source=source,
            resume=stages if dataset is not None and gate is not None else None,
        )  # fmt: skip
        threads_used = torch.get_num_threads()
    seconds = time.perf_counter() - started
    save_artifact(nern, target)
    stages.discard()
    summary = {**code_summary(nern, target, record, seconds=seconds), "threads": threads_used}
    if gate is not None:
        chosen = record["chosen"]
        drop = None if chosen["top1"] is None else record["holdout_reference_top1"] - chosen["top1"]
        verdict = gate.check(chosen["agreement"], drop, on="held-out training images")
        if not verdict["passed"]:
            verdict["message"] += f"; the closest file found is written to {target}"
        summary["gate"] = verdict
    return summary


# -------------------------------------------------------------------------------------------- prune / quantize
def run_compress_predictor(
    nern_path: PathLike,
    config: QuantizeConfig | PruneConfig,
    *,
    output: PathLike | None = None,
    original: PathLike | None = None,
    data: Sequence[str] | None = None,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    teacher: PathLike | None = None,
    teacher_arch: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Prune or quantize a ``.nern``'s predictor (see ``compression.compress``) and write the result.

    Args:
        nern_path: the .nern.
        config: ``QuantizeConfig`` or ``PruneConfig``.
        output: default: the input's name with the suffix .int8.nern (..., .fp16.nern) or .pruned.nern.
        original: the original checkpoint, whose weights the fine-tuning reconstructs; default: the input's own.
        data: images of the KD phase (``config.kd_iters`` > 0): dataset specs, or none for noise.
        teacher: teacher of the KD phase (a checkpoint or a .nern); default: the input .nern itself.
        split, workers, image_size, teacher_arch, device, threads, trust_pickle, trust_code, reporter: as in
            ``run_distill``.

    Returns:
        ``report.compress_summary`` of the written file.
    """
    nern_path = Path(nern_path)
    quantize = isinstance(config, QuantizeConfig)
    if output is None:
        suffix = ("fp16" if config.bits == "fp16" else f"int{config.bits}") if quantize else "pruned"
        output = Path(f"{nern_path.stem}.{suffix}.nern")
    target = check_output(output, nern_path, original, teacher, *(data or []))
    if not config.kd_iters and (data or teacher is not None or teacher_arch is not None):
        raise UsageError("data and teacher are used by the KD phase only: set kd_iters or drop them")
    nern = load_artifact(nern_path, trust_code=trust_code)
    check_shapes(nern)
    targets = load_checkpoint(original, trust_pickle=trust_pickle) if original is not None else None
    teacher_model, dataset = None, None
    if config.kd_iters:
        check_arch(nern.arch)  # the KD phase builds the student: refuse before any work
        if teacher is None:
            teacher_model = expand_model(nern, device="cpu")
        else:
            teacher_model, _ = load_model(
                teacher, arch=teacher_arch, trust_pickle=trust_pickle, trust_code=trust_code, device="cpu"
            )
            check_teacher(nern, teacher_model)
        dataset = load_datasets(data, split=split, workers=workers, image_size=image_size) if data else None
        check_images(teacher_model, dataset, nern.arch.preset)
    stage = "quantize" if quantize else "prune"
    steps = config.qat_iters if quantize else config.finetune_iters
    phases = f"{steps} recon steps"
    if quantize and config.learned_rounding_steps():
        phases = f"{config.learned_rounding_steps()} learned-rounding steps + {phases}"
    if config.kd_iters:
        phases += f" + {config.kd_iters} KD steps on {_images(dataset)}"
    reporter.log(f"{stage}: {nern_path} -> {target} ({phases})")
    total = steps + config.kd_iters + (config.learned_rounding_steps() if quantize else 0)
    started = time.perf_counter()
    with _threads(threads), reporter.phase(stage, total=total) as on_step:
        result = compress(
            nern, config, target_weights=targets, data=dataset, teacher=teacher_model, device=device, on_step=on_step
        )
        threads_used = torch.get_num_threads()
    seconds = time.perf_counter() - started
    save_artifact(result, target)
    return {**compress_summary(result, nern_path, target, seconds=seconds), "threads": threads_used}


# ------------------------------------------------------------------------------------------------------ expand
def run_expand(
    nern_path: PathLike,
    output: PathLike,
    *,
    device: str = "auto",
    opset: int = 18,
    verify: bool = True,
    threads: int | None = None,
    trust_code: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Expand a ``.nern`` into a ``.safetensors`` state_dict or a verified ``.onnx`` model (see ``export``).

    Returns:
        ``ExpandReport.to_dict()``: path, format, bytes, tensors, seconds, and the ONNX check's figures.
    """
    kind = check_export_path(output)
    check_output(output, nern_path)
    nern = load_artifact(nern_path, trust_code=trust_code)
    check_shapes(nern)
    if kind == "onnx":
        check_arch(nern.arch)
    reporter.log(f"expanding {nern_path} -> {output}")
    with _threads(threads):
        report = export(nern, output, device=device, opset=opset, verify=verify, reporter=reporter)
        threads_used = torch.get_num_threads()
    return {**report.to_dict(), "threads": threads_used, "peak_rss_mb": peak_rss_mb()}


# -------------------------------------------------------------------------------------------------------- eval
def run_eval(
    model_path: PathLike,
    data: str,
    *,
    split: str = "test",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    arch: str | None = None,
    preset: str | None = None,
    compare: PathLike | None = None,
    gate: AccuracyGate | None = None,
    device: str = "auto",
    batch_size: int = 500,
    threads: int | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Top-1 of a checkpoint or a ``.nern`` on a labelled dataset; with ``compare``, paired figures against a
    second model on the same images, and the ``gate`` judged on them.

    ``split``, ``workers`` and ``image_size`` are those of ``load_data``.

    Returns:
        ``model``, ``arch``, ``data``, ``preset``, ``top1``, ``count``; with ``compare``: ``compare`` (the other
        model's top-1 and ``report.compare_results``); with ``gate``: ``gate`` (see ``AccuracyGate.check``).

    Raises:
        UsageError: a gate without ``compare``, data the model cannot take, labels beyond its classes.
    """
    if gate is not None and compare is None:
        raise UsageError("an accuracy gate compares two models: give compare (the original)")
    dataset = load_data(data, split=split, workers=workers, image_size=image_size)
    with _threads(threads):
        model, spec = load_model(model_path, arch=arch, trust_pickle=trust_pickle, trust_code=trust_code, device=device)
        preset_name = preset or spec.preset
        mean, std = preset_stats(preset_name)
        reporter.log(f"evaluating {model_path} on {dataset.source} ({len(dataset)} images)")
        with reporter.phase(f"eval {Path(model_path).name}", total=len(dataset)) as on_step:
            result = evaluate(model, dataset, mean=mean, std=std, device=device, batch_size=batch_size, on_step=on_step)
        summary: dict[str, Any] = {
            "model": str(model_path), "arch": spec.to_dict(), "data": dataset.source, "preset": preset_name,
            "top1": result.top1, "count": result.count, "device": str(resolve_device(device)),
            "threads": torch.get_num_threads(),
        }  # fmt: skip
        if compare is None:
            return summary
        other_model, _ = load_model(compare, arch=arch, trust_pickle=trust_pickle, trust_code=trust_code, device=device)
        reporter.log(f"evaluating {compare} on the same images")
        with reporter.phase(f"eval {Path(compare).name}", total=len(dataset)) as on_step:
            other = evaluate(
                other_model, dataset, mean=mean, std=std, device=device, batch_size=batch_size, on_step=on_step
            )
    paired = compare_results(result, other, dataset.labels)
    summary["compare"] = {"model": str(compare), "top1": other.top1, **paired}
    if gate is not None:
        summary["gate"] = gate.check(paired["agreement"], -paired["delta_top1"], on=dataset.source)
    return summary


# ------------------------------------------------------------------------------------------------------ select
def run_select(
    candidates: Sequence[PathLike],
    *,
    reference: PathLike,
    data: Sequence[str],
    output: PathLike,
    holdout: float = DistillConfig.holdout,
    holdout_seed: int = DistillConfig.holdout_seed,
    split: str = "train",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
    arch: str | None = None,
    device: str = "auto",
    batch_size: int = 500,
    threads: int | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Copy to ``output`` the candidate that agrees most with ``reference`` on held-out training images.

    For the best of several runs (e.g. seeds): give the data that distill was given, and only the share it held
    out is scored (the same split for every seed). Never select on test images. ``split``, ``workers`` and
    ``image_size`` are those of ``load_data``.

    Returns:
        ``reference``, ``data``, ``images``, ``candidates`` (path, agreement, top1), ``selected``,
        ``selected_index``, ``output``.
    """
    if len(candidates) < 2:
        raise UsageError("select needs two or more candidates")
    if "noise" in data:
        raise UsageError("select scores on real images: data 'noise' cannot be used")
    target = check_output(output, *candidates, reference, *data)
    dataset = load_datasets(data, split=split, workers=workers, image_size=image_size)
    if holdout > 0:
        dataset = split_holdout(dataset, fraction=holdout, seed=holdout_seed)[1]
    reporter.log(f"scoring {len(candidates)} candidates on {_images(dataset)}")
    results = []
    with _threads(threads):
        for path in (reference, *candidates):  # each model normalises the images with its own preset
            model, spec = load_model(path, arch=arch, trust_pickle=trust_pickle, trust_code=trust_code, device=device)
            check_images(model, dataset, spec.preset)
            mean, std = preset_stats(spec.preset)
            results.append(evaluate(model, dataset, mean=mean, std=std, device=device, batch_size=batch_size))
    reference_result, *results = results
    best, agreements = most_faithful(results, reference_result)
    with atomic_path(target) as tmp:
        shutil.copyfile(candidates[best], tmp)
    return {
        "reference": str(reference),
        "data": dataset.source,
        "images": len(dataset),
        "candidates": [
            {"path": str(path), "agreement": agreement, "top1": result.top1}
            for path, agreement, result in zip(candidates, agreements, results)
        ],
        "selected": str(candidates[best]),
        "selected_index": best,
        "output": str(target),
    }


# ----------------------------------------------------------------------------------------------------- inspect
def run_inspect(path: PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """What a ``.nern`` holds (``report.artifact_report``, ``kind="nern"``) or a checkpoint
    (``report.checkpoint_report``, ``kind="checkpoint"``)."""
    if is_nern_file(path):
        return {"kind": "nern", **artifact_report(path)}
    return {"kind": "checkpoint", **checkpoint_report(path, trust_pickle=trust_pickle)}
