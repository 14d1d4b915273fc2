"""nerncompress: compress trained CNNs into neural representations of their weights, and expand them back.

The public API, imported lazily so that ``import nerncompress`` stays cheap::

    state_dict = load_checkpoint("resnet20.th")
    nern = fit(state_dict, FitConfig(hidden=180))
    nern = distill(nern, teacher_model, load_data("train.npz", split="train"))
    save_artifact(nern, "resnet20.nern")
    export(load_artifact("resnet20.nern"), "resnet20.onnx")

The jobs (``run_fit``, ``run_eval``, ...) do what the CLI's commands do, from paths, with every input checked
first; the CLI imports nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    # checkpoints and architectures
    "load_checkpoint": "checkpoint",
    "normalize_state_dict": "checkpoint",
    "ArchSpec": "models.registry",
    "detect_arch": "models.registry",
    "get_arch": "models.registry",
    "build_model": "models.registry",
    "list_archs": "models.registry",
    "register_arch": "models.registry",
    # the representation
    "Nern": "nern",
    "expand": "nern",
    "expand_state_dict": "nern",
    "expand_model": "nern",
    "PERMUTATIONS": "permutations",
    # fitting, distillation, compression
    "FitConfig": "training",
    "SCHEMES": "training",
    "fit": "training",
    "DistillConfig": "distillation",
    "KD_LOSSES": "distillation",
    "distill": "distillation",
    "compress": "compression",
    "CodeConfig": "coding",
    "ALLOCATIONS": "coding",
    "code_checkpoint": "coding",
    "PruneConfig": "compression",
    "QuantizeConfig": "compression",
    "BITS": "quantization",
    "ROUNDINGS": "compression",
    "PRUNE_METHODS": "compression",
    "PRUNE_SCOPES": "compression",
    "PRUNE_SCHEDULES": "compression",
    "DEFAULT_EVERY_STEPS": "resume",
    "DEFAULT_EVERY_SECONDS": "resume",
    # files
    "save_artifact": "artifact",
    "load_artifact": "artifact",
    "read_metadata": "artifact",
    "is_nern_file": "artifact",
    "export": "exporter",
    # data and evaluation
    "load_data": "data",
    "DEFAULT_WORKERS": "image_folder",
    "MIX_METHODS": "data",
    "evaluate": "evaluation",
    "AccuracyGate": "gate",
    "enforce_gate": "gate",
    # jobs: what each command does
    "load_model": "jobs",
    "load_datasets": "jobs",
    "run_fit": "jobs",
    "run_distill": "jobs",
    "run_compress": "jobs",
    "run_compress_predictor": "jobs",
    "run_expand": "jobs",
    "run_eval": "jobs",
    "run_select": "jobs",
    "run_inspect": "jobs",
    "run_demo": "demo",
    "DEMO_FIT": "demo",
    "DEMO_TRAIN_EPOCHS": "demo",
    "environment_report": "report",
    "resolve_device": "devices",
    "process_rank": "distributed",
    "Reporter": "progress",
    "StepCallback": "progress",
    "silent": "progress",
    # errors
    "NernError": "errors",
    "UsageError": "errors",
    "CheckpointError": "errors",
    "ArchDetectionError": "errors",
    "ArtifactError": "errors",
    "DataError": "errors",
    "ExportCheckError": "errors",
    "AccuracyTargetMissed": "errors",
    "Interrupted": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nerncompress' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    if name in ("load_checkpoint", "detect_arch", "get_arch", "build_model", "list_archs"):
        importlib.import_module(".models", __name__)  # registers the architectures detection relies on
    return getattr(module, name)


def __dir__() -> list[str]:
    return __all__
