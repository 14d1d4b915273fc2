"""Regenerating weights from a Nern, one layer at a time, and writing them as standard checkpoints.

``expand`` yields (key, tensor) pairs in the original state_dict's order, regenerating one represented layer at
a time, so peak memory holds one layer's kernels rather than the whole model twice. ``save_safetensors``
streams those pairs straight into a safetensors file (the header is computed from shapes alone, before any
weight is regenerated). ``export`` writes ``.safetensors`` or verified ``.onnx`` by the output's suffix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from .devices import resolve_device
from .errors import ArtifactError, UsageError
from .models.registry import build_model, check_arch, get_arch
from .nern import Nern
from .onnx_export import ExportReport, export_onnx
from .safetensors_io import TensorSpec, save_safetensors

def expand(nern: Nern, *, device: str = "auto") -> Iterator[tuple[str, Tensor]]:
    """Yield every tensor of the original state_dict, in its original order, regenerating represented layers.

    Args:
        nern: the representation.
        device: where the predictor runs (auto | cpu | cuda[:N]); tensors are yielded on the CPU.

    Yields:
        (state_dict key, tensor) pairs; represented conv weights are float32 with their original shape.

    Example:
        >>> state_dict = dict(expand(load_artifact("resnet20.nern")))
    """
    torch_device = resolve_device(device)
    predictor = nern.predictor.to(torch_device).eval()
    represented = {entry.name: entry for entry in nern.layers}
    try:
        with torch.inference_mode():
            for key in nern.key_order:
                if key in represented:
                    yield key, nern.regenerate_layer(represented[key]).cpu()
                else:
                    yield key, nern.raw[key]
    finally:
        predictor.cpu()


def expand_state_dict(nern: Nern, *, device: str = "auto") -> dict[str, Tensor]:
    """The whole regenerated state_dict (convenience over ``expand``)."""
    return dict(expand(nern, device=device))


def expand_model(nern: Nern, *, device: str = "auto", trust_code: bool = False) -> nn.Module:
    """The architecture with regenerated weights, loaded strictly, in eval mode, on the CPU.

    ``trust_code``: build the .nern's architecture even when it is a user builder (``pkg.module:function``, whose
    module is imported: trusted files only) or beyond the bounds a file may ask for (see ``registry.check_arch``).

    Raises:
        UsageError: the architecture is a user builder and ``trust_code`` is False.
    """
    check_arch(nern.arch, trust_code=trust_code)  # before regenerating anything
    return build_model(nern.arch, expand_state_dict(nern, device=device), trust_code=trust_code)


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


def tensor_specs(nern: Nern) -> list[TensorSpec]:
    """(key, dtype, shape) of every tensor ``expand`` yields, without regenerating anything."""
    represented = {entry.name: entry for entry in nern.layers}
    specs = []
    for key in nern.key_order:
        if key in represented:
            specs.append((key, torch.float32, represented[key].shape))
        else:
            specs.append((key, nern.raw[key].dtype, tuple(nern.raw[key].shape)))
    return specs


_CPU_CHECK_ELEMENTS = 16_000_000


def check_shapes(nern: Nern, *, trust_code: bool = False) -> None:
    """Refuse a Nern whose tensors do not fit its architecture (keys and shapes), before anything is written.

    The architecture is built on the CPU for models up to 16M values and on the meta device (no weights) above. Architectures named ``pkg.module:function``
    are not imported here, since importing runs the module's code; they are checked when the model is built.
    ``trust_code`` lifts the bounds on the kwargs of an architecture read from a file (``registry.check_arch``).

    Raises:
        ArtifactError: naming the first key that is unknown to the architecture, missing, or of another shape, or
            an architecture that cannot be built.
        ArchDetectionError: kwargs or an input shape beyond the bounds a file may ask for (``check_arch``).
    """
    name = nern.arch.name
    if nern.arch.is_user_builder():
        return
    check_arch(nern.arch, trust_code=trust_code)  # its own one-line message: kwargs beyond a file's bounds
    specs = {key: shape for key, _, shape in tensor_specs(nern)}
    elements = sum(int(torch.Size(shape).numel()) for shape in specs.values())
    # Entering the meta-device context costs about 180 MB of RSS on first use, more than building a small model
    # for real; a model that matches the file holds `elements` values, so small ones are built on the CPU.
    device = "cpu" if elements <= _CPU_CHECK_ELEMENTS else "meta"
    try:
        with torch.device(device):
            reference = get_arch(nern.arch, trust_code=trust_code).state_dict()
    except Exception as exc:  # noqa: BLE001 - the arch spec comes from the file: any failure means a bad spec
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ArtifactError(f"arch {name} {nern.arch.kwargs} of the .nern cannot be built: {detail}") from exc
    for key, shape in specs.items():
        if key not in reference:
            raise ArtifactError(
                f"tensor {key!r} is not part of arch {name} {nern.arch.kwargs}: the .nern is inconsistent"
            )
        if tuple(shape) != tuple(reference[key].shape):
            raise ArtifactError(
                f"tensor {key!r} has shape {tuple(shape)} in the .nern but {tuple(reference[key].shape)} in arch "
                f"{name} {nern.arch.kwargs}: the .nern is inconsistent"
            )
    missing = [key for key in reference if key not in specs and not key.endswith("num_batches_tracked")]
    if missing:
        raise ArtifactError(f"the .nern lacks tensor {missing[0]!r} of arch {name}: the .nern is inconsistent")


def fp32_reference_bytes(nern: Nern) -> int:
    """Bytes of the original weights saved as a plain fp32 safetensors state_dict (by the safetensors library
    itself, on zero tensors of the same keys, dtypes and shapes): the denominator of the file ratio."""
    zeros = {
        key: torch.zeros(shape, dtype=torch.float32 if dtype.is_floating_point else dtype)
        for key, dtype, shape in tensor_specs(nern)
    }
    return len(safetensors.torch.save(zeros))


def export(
    nern: Nern,
    path: str | os.PathLike,
    *,
    device: str = "auto",
    opset: int = 18,
    verify: bool = True,
    verify_inputs: int = 64,
    tolerance: float = 1e-4,
    trust_code: bool = False,
) -> ExpandReport:
    """Expand ``nern`` into ``path``: ``.safetensors`` (plain state_dict) or ``.onnx`` (verified with onnxruntime).

    A ``.safetensors`` output never builds the architecture; an ``.onnx`` one does, so a .nern naming a user builder
    needs ``trust_code=True`` (see ``expand_model``).

    Raises:
        UsageError: an unknown output suffix, or an untrusted user builder (ONNX). ExportCheckError: the ONNX model
            disagrees with PyTorch.

    Example:
        >>> export(load_artifact("resnet56.nern"), "resnet56.onnx")
    """
    started = time.perf_counter()
    suffix = Path(path).suffix.lower()
    if suffix not in (".safetensors", ".onnx"):
        raise UsageError(f"output {path} must end in .safetensors or .onnx")
    check_shapes(nern, trust_code=trust_code)
    if suffix == ".safetensors":
        specs = tensor_specs(nern)
        metadata = {"format": "pt", "arch": json.dumps(nern.arch.to_dict(), sort_keys=True)}
        size = save_safetensors(expand(nern, device=device), path, specs=specs, metadata=metadata)
        return ExpandReport(str(path), "safetensors", size, len(specs), time.perf_counter() - started)
    if suffix == ".onnx":
        model = expand_model(nern, device=device, trust_code=trust_code)
        report: ExportReport = export_onnx(
            model,
            path,
            input_shape=nern.arch.input_shape,
            opset=opset,
            verify=verify,
            verify_inputs=verify_inputs,
            tolerance=tolerance,
            provider="auto" if resolve_device(device).type == "cuda" else "cpu",
        )
        return ExpandReport(
            str(path), "onnx", report.bytes, len(nern.key_order), time.perf_counter() - started, report.to_dict()
        )
    raise UsageError(f"output {path} must end in .safetensors or .onnx")
