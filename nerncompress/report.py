"""Reports as plain dicts: what a ``.nern`` or a checkpoint holds, what a fit produced, the environment.

Nothing here prints; ``cli/`` renders these dicts as tables or as JSON. Every size is in bytes, every ratio is a
plain fraction (0.25 = a quarter), every accuracy in percent.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections import Counter
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._version import __version__
from ._io import PathLike, sha256_file
from .artifact import group_bytes, load_artifact, read_metadata, stream_bytes
from .checkpoint import load_checkpoint
from .errors import ArchDetectionError, ArtifactError
from .evaluation import EvalResult
from .models.registry import detect_arch
from .nern import Nern, fp32_reference_bytes, tensor_specs

__all__ = [
    "artifact_report",
    "checkpoint_report",
    "code_summary",
    "compare_results",
    "compress_summary",
    "distill_summary",
    "environment_report",
    "fit_summary",
    "source_provenance",
]

_PACKAGES = (
    "torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "safetensors", "typer", "rich", "numpy", "scipy",
    "scikit-learn",
)  # fmt: skip


# A model whose parameters are mostly stored raw is barely compressed: inspect says so.
MOSTLY_RAW = 0.5


def _tensor_table(nern: Nern, streams: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per tensor of the original state_dict, in its order: how it is stored and what it costs."""
    per_key: Counter[str] = Counter()
    for name, size in streams.items():
        group, _, rest = name.partition("/")
        if group in ("positions", "scales", "codes", "raw"):
            key = next((k for k in (rest, rest.rsplit("/", 1)[0]) if k in nern.key_order), rest)
            per_key[key] += size
    represented = {entry.name: entry for entry in nern.layers}
    rows = []
    for key, _, shape in tensor_specs(nern):
        values = int(torch.Size(shape).numel())
        storage = nern.storage(key)
        row: dict[str, Any] = {
            "name": key,
            "shape": list(shape),
            "values": values,
            "storage": storage,
            "bytes": per_key[key],
            "bits_per_value": round(8 * per_key[key] / values, 3) if values else 0.0,
            "reason": nern.raw_convs.get(key, ""),
        }
        if key in represented:
            row["layer_index"] = represented[key].layer_index
            row["kernel_size"] = represented[key].kernel_size
        if key in nern.codes:
            row["step"] = nern.codes[key].step
        rows.append(row)
    return rows


def _shares(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of the model's parameters by storage: represented (by the predictor, with or without a residual),
    coded (integers without the predictor) and raw."""
    total = sum(row["values"] for row in rows) or 1
    counts: Counter[str] = Counter()
    for row in rows:
        counts["represented" if row["storage"].startswith("predicted") else row["storage"]] += row["values"]
    return {name: counts[name] / total for name in ("represented", "coded", "raw")}


def artifact_report(path: PathLike) -> dict[str, Any]:
    """Everything worth knowing about a ``.nern`` file: sizes, ratios, tensor table, provenance, history.

    Args:
        path: the artifact.

    Returns:
        A JSON-serialisable dict with ``path``, ``file_bytes``, ``bytes`` (by group: header = safetensors header
        and compressed structure; predictor, positions, scales, codes, raw, other; the groups sum to
        ``file_bytes``), ``streams`` (bytes of every stream by name), ``tensors`` (one row per state_dict tensor:
        name, shape, values, storage = predicted | predicted+residual | coded | raw, bytes, bits_per_value, step
        of a coded tensor, reason a conv is raw), ``shares`` (share of parameters represented, coded and raw),
        ``warnings``, ``predictor_parameters``, ``conv_parameters`` (represented conv weights), ``conv_ratio``
        (predictor parameters / represented conv weights), ``fp32_reference_bytes`` (the original weights as a
        plain fp32 safetensors file), ``file_ratio`` (file bytes / fp32 reference bytes), ``represented_layers``,
        ``coded_tensors``, ``raw_tensors``, ``arch``, ``embedding``, ``predictor``, ``permute``, ``compression``,
        ``source``, ``history``, ``tool_version``, ``schema_version``.

    Raises:
        ArtifactError: for a missing, corrupt or inconsistent file.

    Example:
        >>> artifact_report("resnet20.nern")["file_ratio"]
        0.21
    """
    nern = load_artifact(path)
    meta = read_metadata(path)
    streams = stream_bytes(path)
    file_bytes = Path(path).stat().st_size
    reference = fp32_reference_bytes(nern)
    rows = _tensor_table(nern, streams)
    shares = _shares(rows)
    warnings = []
    if shares["raw"] > MOSTLY_RAW:
        warnings.append(
            f"{100 * shares['raw']:.0f}% of the parameters are stored raw: this file is barely compressed "
            "(represent or code the large layers)"
        )
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "bytes": group_bytes(streams),
        "streams": streams,
        "tensors": rows,
        "shares": shares,
        "warnings": warnings,
        "predictor_parameters": nern.predictor_parameters(),
        "conv_parameters": nern.conv_parameters(),
        "conv_ratio": nern.conv_ratio(),
        "fp32_reference_bytes": reference,
        "file_ratio": file_bytes / reference,
        "represented_layers": len(nern.layers),
        "coded_tensors": sum(1 for key in nern.codes if key not in {e.name for e in nern.layers}),
        "raw_convs": len(nern.raw_convs),
        "raw_tensors": len(nern.raw),
        "arch": nern.arch.to_dict(),
        "embedding": {**nern.embedding.to_dict(), "dim": nern.embedding.dim},
        "predictor": None if nern.predictor is None else nern.predictor.config.to_dict(),
        "permute": nern.permute,
        "compression": nern.compression,
        "source": nern.source,
        "history": nern.history,
        "tool_version": meta.get("tool_version"),
        "schema_version": meta.get("schema_version"),
    }


def fit_summary(nern: Nern, path: PathLike, *, seconds: float) -> dict[str, Any]:
    """The figures ``nerncompress fit`` prints once ``nern`` is saved at ``path``.

    Returns:
        ``path``, ``file_bytes``, ``conv_ratio``, ``file_ratio`` (as in :func:`artifact_report`), ``seconds`` (wall
        time of the fit), parameter counts, and the last history record's reconstruction error (``rmse`` in weight
        units, ``relative_rmse`` = rmse / weight std, ``normalised_rmse``, ``final_loss``).
    """
    file_bytes = Path(path).stat().st_size
    reference = fp32_reference_bytes(nern)
    last = nern.history[-1] if nern.history else {}
    errors = {key: last[key] for key in ("rmse", "relative_rmse", "normalised_rmse", "final_loss") if key in last}
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "fp32_reference_bytes": reference,
        "predictor_parameters": nern.predictor_parameters(),
        "conv_parameters": nern.conv_parameters(),
        "conv_ratio": nern.conv_ratio(),
        "file_ratio": file_bytes / reference,
        "seconds": seconds,
        "steps": last.get("steps"),
        "device": last.get("device"),
        "represented_layers": len(nern.layers),
        "raw_convs": dict(nern.raw_convs),
        "arch": nern.arch.to_dict(),
        "reconstruction": errors,
    }


def distill_summary(nern: Nern, path: PathLike, *, seconds: float) -> dict[str, Any]:
    """The figures ``nerncompress distill`` prints once ``nern`` is saved at ``path``.

    Returns:
        ``path``, ``file_bytes``, ``file_ratio``, ``conv_ratio`` (as in :func:`artifact_report`), ``seconds``, and
        from the last (distill) history record: ``steps``, ``selected_step`` (the step kept by holdout selection),
        ``holdout_agreement`` (percent of held-out images where student and teacher agree; None without holdout),
        ``holdout_top1`` and ``holdout_drop`` (the student's top-1 on them, and the teacher's top-1 minus it),
        ``final_loss``, ``device``, ``data`` and ``teacher`` (file, sha256, arch).
    """
    file_bytes = Path(path).stat().st_size
    reference = fp32_reference_bytes(nern)
    last = nern.history[-1] if nern.history else {}
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "fp32_reference_bytes": reference,
        "file_ratio": file_bytes / reference,
        "conv_ratio": nern.conv_ratio(),
        "seconds": seconds,
        "steps": last.get("steps"),
        "selected_step": last.get("selected_step"),
        "holdout_agreement": last.get("holdout_agreement"),
        "holdout_top1": last.get("holdout_top1"),
        "holdout_drop": _drop(last.get("holdout_teacher_top1"), last.get("holdout_top1")),
        "final_loss": last.get("final_loss"),
        "device": last.get("device"),
        "data": last.get("data"),
        "teacher": last.get("teacher", {}),
        "arch": nern.arch.to_dict(),
    }


def _drop(reference: float | None, result: float | None) -> float | None:
    return None if reference is None or result is None else reference - result


def code_summary(nern: Nern, path: PathLike, record: Mapping[str, Any], *, seconds: float) -> dict[str, Any]:
    """The figures ``nerncompress compress`` prints once the coded ``nern`` is saved at ``path``.

    Returns:
        ``path``, ``file_bytes``, ``fp32_reference_bytes``, ``file_ratio``, ``bits_per_parameter`` (file bits /
        parameters of the original), ``seconds``, ``device``, ``data``, and from the coding ``record``: the
        ``chosen`` candidate (coarseness, bytes, held-out agreement and top-1, fine-tuned steps), every
        ``candidates`` tried, ``target_met`` and ``holdout_reference_top1`` (the original's top-1 on the held-out
        images).
    """
    file_bytes = Path(path).stat().st_size
    reference = fp32_reference_bytes(nern)
    parameters = sum(int(torch.Size(shape).numel()) for _, _, shape in tensor_specs(nern))
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "fp32_reference_bytes": reference,
        "file_ratio": file_bytes / reference,
        "bits_per_parameter": 8 * file_bytes / parameters if parameters else None,
        "seconds": seconds,
        "device": record.get("device"),
        "data": record.get("data"),
        "chosen": record.get("chosen"),
        "candidates": record.get("candidates"),
        "target_met": record.get("target_met"),
        "holdout_reference_top1": record.get("holdout_reference_top1"),
        "hybrid": record.get("hybrid"),
        "arch": nern.arch.to_dict(),
    }


def compress_summary(nern: Nern, input_path: PathLike, path: PathLike, *, seconds: float) -> dict[str, Any]:
    """The figures ``nerncompress quantize`` / ``prune`` print once ``nern`` (compressed from the .nern at
    ``input_path``) is saved at ``path``.

    Returns:
        ``path``, ``input``, ``stage`` ("quantize" or "prune"), ``file_bytes_before`` (the input on disk),
        ``file_bytes_after`` (= ``file_bytes``, the output on disk), ``fp32_reference_bytes``, ``file_ratio_before``
        and ``file_ratio`` (file bytes / fp32 reference bytes), ``conv_ratio`` (predictor parameters / represented
        conv weights), ``predictor_bytes_before`` / ``predictor_bytes_after`` (tensor data of the predictor),
        ``compression`` (the new state, without its storage ``layout``), ``reconstruction`` (``before``, ``naive``
        = compressed without fine-tuning, ``gptq`` / ``learned`` when that rounding ran, and ``after``; each with
        ``rmse``, ``relative_rmse``, ``normalised_rmse``; measured against ``targets``: "self" = the input's own
        regenerated weights, "given" = --original), ``achieved_sparsity`` (unstructured pruning), ``widths_before`` /
        ``widths_after`` (structured pruning), ``steps``, ``seconds``, ``device``, ``data``, ``config``, ``arch``.
    """
    file_bytes = Path(path).stat().st_size
    input_bytes = Path(input_path).stat().st_size
    reference = fp32_reference_bytes(nern)
    last = nern.history[-1] if nern.history else {}
    error_keys = ("rmse", "relative_rmse", "normalised_rmse")
    stages = ("before", "naive", "gptq", "learned")
    reconstruction = {key: last[key] for key in stages if isinstance(last.get(key), dict)}
    reconstruction["after"] = {key: last[key] for key in error_keys if key in last}
    summary = {
        "path": str(path),
        "input": str(input_path),
        "stage": last.get("stage"),
        "file_bytes_before": input_bytes,
        "file_bytes_after": file_bytes,
        "file_bytes": file_bytes,
        "fp32_reference_bytes": reference,
        "file_ratio_before": input_bytes / reference,
        "file_ratio": file_bytes / reference,
        "conv_ratio": nern.conv_ratio(),
        "predictor_parameters": nern.predictor_parameters(),
        "conv_parameters": nern.conv_parameters(),
        "predictor_bytes_before": last.get("predictor_bytes_before"),
        "predictor_bytes_after": last.get("predictor_bytes_after"),
        "compression": {key: value for key, value in nern.compression.items() if key != "layout"},
        "targets": last.get("targets"),
        "reconstruction": reconstruction,
        "steps": last.get("steps"),
        "seconds": seconds,
        "device": last.get("device"),
        "data": last.get("data"),
        "config": last.get("config", {}),
        "arch": nern.arch.to_dict(),
    }
    for key in ("achieved_sparsity", "widths_before", "widths_after"):
        if key in last:
            summary[key] = last[key]
    return summary


def _tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def source_provenance(path: PathLike, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a ``.nern`` records about the checkpoint it came from.

    Returns:
        ``file`` (name only, no folder), ``sha256`` of the file, ``bytes`` on disk, ``tensors``, ``parameters``.
    """
    file = Path(path)
    return {
        "file": file.name,
        "sha256": sha256_file(file),
        "bytes": file.stat().st_size,
        "tensors": len(state_dict),
        "parameters": sum(int(value.numel()) for value in state_dict.values()),
    }


def checkpoint_report(path: PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """What a checkpoint holds: tensor count, parameters, bytes, dtypes, detected architecture.

    Args:
        path: a checkpoint file (see :func:`nerncompress.checkpoint.load_checkpoint`).
        trust_pickle: as in ``load_checkpoint``.

    Returns:
        ``path``, ``file_bytes``, ``sha256``, ``tensors``, ``parameters``, ``tensor_bytes`` (in the stored dtypes),
        ``dtypes`` (dtype -> tensor count), ``conv_weights`` (4-D weights) and ``conv_parameters``, ``arch`` (the
        detected spec, or None) and ``arch_error`` (why detection failed, or None).

    Raises:
        CheckpointError: the file cannot be read as a checkpoint.
    """
    state_dict = load_checkpoint(path, trust_pickle=trust_pickle)
    convs = [value for key, value in state_dict.items() if key.endswith("weight") and value.dim() == 4]
    try:
        arch: dict[str, Any] | None = detect_arch(state_dict).to_dict()
        arch_error = None
    except ArchDetectionError as exc:
        arch, arch_error = None, str(exc)
    return {
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
        "tensors": len(state_dict),
        "parameters": sum(int(value.numel()) for value in state_dict.values()),
        "tensor_bytes": sum(_tensor_bytes(value) for value in state_dict.values()),
        "dtypes": dict(Counter(str(value.dtype).removeprefix("torch.") for value in state_dict.values())),
        "conv_weights": len(convs),
        "conv_parameters": sum(int(value.numel()) for value in convs),
        "arch": arch,
        "arch_error": arch_error,
    }


def paired_delta_ci95(only_first_correct: int, only_second_correct: int, count: int) -> float:
    """Half-width, in percentage points, of the 95% interval of a paired top-1 difference.

    Only the images that one model gets right and the other wrong move the difference, so its noise comes from
    those discordant counts ``b`` and ``c``, not from the test-set size alone: the variance of ``(b - c) / n`` is
    ``(b + c - (b - c)^2 / n) / n^2`` (the normal approximation behind McNemar's test). Two models that agree on
    95% of 1,000 images can differ by 1.4 points by chance alone (about 0.45 on 10,000).

    Args:
        only_first_correct, only_second_correct: the discordant counts ``b`` and ``c``.
        count: ``n``, the number of images both models were evaluated on.

    Returns:
        ``1.96 * sqrt(variance) * 100``; 0.0 when the models never differ (or ``n`` is 0).
    """
    if count <= 0:
        return 0.0
    discordant, net = only_first_correct + only_second_correct, only_first_correct - only_second_correct
    variance = max(discordant - net * net / count, 0.0) / count**2
    return 1.96 * math.sqrt(variance) * 100.0


def compare_results(first: EvalResult, second: EvalResult, labels: Tensor) -> dict[str, Any]:
    """Paired comparison of two models evaluated on the same images, in the same order.

    Args:
        first, second: results of :func:`nerncompress.evaluation.evaluate` on the same data.
        labels: int64 (N,) the data's labels.

    Returns:
        ``agreement`` (percent of equal predictions), ``delta_top1`` (first - second, percentage points),
        ``delta_top1_ci95`` (half-width of its 95% interval, points; see :func:`paired_delta_ci95`), and the
        paired counts ``both_correct``, ``only_first_correct``, ``only_second_correct``, ``both_wrong`` (the two
        ``only_*`` counts are the discordant pairs a McNemar test would use).

    Raises:
        ValueError: the results cover different numbers of images.
    """
    agreement = first.agreement(second)
    right_first = first.predictions.cpu() == labels.cpu()
    right_second = second.predictions.cpu() == labels.cpu()
    only_first, only_second = int((right_first & ~right_second).sum()), int((~right_first & right_second).sum())
    return {
        "agreement": agreement,
        "delta_top1": first.top1 - second.top1,
        "delta_top1_ci95": paired_delta_ci95(only_first, only_second, first.count),
        "both_correct": int((right_first & right_second).sum()),
        "only_first_correct": only_first,
        "only_second_correct": only_second,
        "both_wrong": int((~right_first & ~right_second).sum()),
        "count": first.count,
    }


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def environment_report() -> dict[str, Any]:
    """Versions, devices and threads, for bug reports.

    Returns:
        ``versions`` (python, nerncompress and each dependency; None when not installed), ``cuda`` (available,
        torch's CUDA version, devices with name and memory in bytes), ``torch_threads``, ``cpu_count``,
        ``onnxruntime_providers``, ``platform``.
    """
    versions: dict[str, str | None] = {"python": platform.python_version(), "nerncompress": __version__}
    versions.update({package: _version(package) for package in _PACKAGES})
    versions["torch"] = torch.__version__  # with its build tag (+cpu, +cu130): which wheel matters for bugs
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    try:
        import onnxruntime

        providers: list[str] | None = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = None
    return {
        "versions": versions,
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "devices": devices,
        },
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "onnxruntime_providers": providers,
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "python_executable": sys.executable,
        },
    }
