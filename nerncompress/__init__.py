"""nerncompress: compress trained CNNs into neural representations of their weights, and expand them back.

The public API, imported lazily so that ``import nerncompress`` stays cheap::

    state_dict = load_checkpoint("resnet20.th")
    nern = fit(state_dict, FitConfig(hidden=180))
    nern = distill(nern, teacher_model, load_data("train.npz", split="train"))
    save_artifact(nern, "resnet20.nern")
    export(load_artifact("resnet20.nern"), "resnet20.onnx")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_checkpoint": "checkpoint",
    "normalize_state_dict": "checkpoint",
    "ArchSpec": "models.registry",
    "detect_arch": "models.registry",
    "get_arch": "models.registry",
    "build_model": "models.registry",
    "list_archs": "models.registry",
    "register_arch": "models.registry",
    "FitConfig": "training",
    "DistillConfig": "distillation",
    "fit": "training",
    "distill": "distillation",
    "compress": "compression",
    "PruneConfig": "compression",
    "QuantizeConfig": "compression",
    "Nern": "nern",
    "save_artifact": "artifact",
    "load_artifact": "artifact",
    "read_metadata": "artifact",
    "expand": "expand",
    "expand_model": "expand",
    "export": "expand",
    "load_data": "data",
    "evaluate": "evaluation",
    "NernError": "errors",
    "UsageError": "errors",
    "CheckpointError": "errors",
    "ArchDetectionError": "errors",
    "ArtifactError": "errors",
    "DataError": "errors",
    "ExportCheckError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nerncompress' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    if name == "load_checkpoint":
        importlib.import_module(".models", __name__)  # registers the architectures detection relies on
    return getattr(module, name)


def __dir__() -> list[str]:
    return __all__
