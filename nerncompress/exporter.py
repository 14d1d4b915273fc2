"""Writing a Nern as a standard checkpoint: ``.safetensors`` (a plain state_dict) or ``.onnx`` (verified).

``export`` streams the tensors of ``nern.expand`` straight into a safetensors file (the header is computed from
shapes alone, before any weight is regenerated), or builds the model and hands it to ``onnx_export``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .devices import resolve_device
from .errors import UsageError
from .nern import Nern, check_shapes, expand, expand_model, tensor_specs
from .onnx_export import ExportReport, export_onnx
from .progress import Reporter, silent
from .safetensors_io import save_safetensors

EXPORT_SUFFIXES = (".safetensors", ".onnx")


@dataclass
class ExpandReport:
    """What ``export`` wrote. ``onnx`` holds the verification figures for an ONNX output."""

    path: str
    format: str
    bytes: int
    tensors: int
    seconds: float
    onnx: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_export_path(path: str | os.PathLike) -> str:
    """The output format of ``path`` by its suffix: "safetensors" or "onnx".

    Raises:
        UsageError: any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise UsageError(f"output {path} must end in .safetensors or .onnx")
    return suffix[1:]


def export(
    nern: Nern,
    path: str | os.PathLike,
    *,
    device: str = "auto",
    opset: int = 18,
    verify: bool = True,
    verify_inputs: int = 64,
    tolerance: float = 1e-4,
    reporter: Reporter = silent,
) -> ExpandReport:
    """Expand ``nern`` into ``path``: ``.safetensors`` (plain state_dict) or ``.onnx`` (verified with onnxruntime).

    A ``.safetensors`` output never builds the architecture; an ``.onnx`` one does, so a .nern read from an
    untrusted file whose architecture is a user builder is refused (load it with ``trust_code=True``).

    Args:
        nern: the representation.
        path: the output; its suffix chooses the format.
        device: where the predictor (and the ONNX check) runs.
        opset, verify, verify_inputs, tolerance: the ONNX export and its check against PyTorch.
        reporter: progress of the regeneration and the ONNX phases.

    Raises:
        UsageError: an unknown output suffix, or an untrusted user builder (ONNX). ExportCheckError: the ONNX model
            disagrees with PyTorch.

    Example:
        >>> export(load_artifact("resnet56.nern"), "resnet56.onnx")
    """
    started = time.perf_counter()
    kind = check_export_path(path)
    check_shapes(nern)
    if kind == "safetensors":
        specs = tensor_specs(nern)
        metadata = {"format": "pt", "arch": json.dumps(nern.arch.to_dict(), sort_keys=True)}
        with reporter.phase("expand", total=len(specs)) as on_step:
            tensors = _counted(expand(nern, device=device), on_step, len(specs))
            size = save_safetensors(tensors, path, specs=specs, metadata=metadata)
        return ExpandReport(str(path), "safetensors", size, len(specs), time.perf_counter() - started)
    with reporter.phase("expand", total=None):
        model = expand_model(nern, device=device)
    with reporter.phase("onnx export and check", total=None):
        report: ExportReport = export_onnx(
            model, path, input_shape=nern.arch.input_shape, opset=opset, verify=verify, verify_inputs=verify_inputs,
            tolerance=tolerance, provider="auto" if resolve_device(device).type == "cuda" else "cpu",
        )  # fmt: skip
    return ExpandReport(
        str(path), "onnx", report.bytes, len(nern.key_order), time.perf_counter() - started, report.to_dict()
    )


def _counted(pairs, on_step, total: int):
    for done, pair in enumerate(pairs, start=1):
        yield pair
        on_step(done, total, {})
