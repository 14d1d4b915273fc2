"""``Nern``: the in-memory neural representation of a checkpoint, and its regeneration into weights.

It holds everything needed to regenerate the original state_dict: the predictor, the represented layers with
their kernel positions (smoothing permutations) and per-filter scales, coded tensors (integers on a uniform grid:
a weight stored without the predictor, or the residual of a represented layer), and every other tensor raw. The file
layout lives in ``artifact``; this module turns a Nern back into weights (``expand``, one layer at a time) and
into a model (``expand_model``), and checks that a Nern fits its architecture (``check_shapes``).

Regenerated weight of represented layer L, kernel i = f * C_in + c:
    W[f, c] = scale[f] * predictor(embedding(L, position[i]))
An optional per-filter scale (the RMS of the filter's original weights, C_out floats per layer) lets the
predictor learn unit-scale kernels; without it (the default, measured better) scale[f] is 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from .codes import QuantizedTensor
from .devices import resolve_device
from .embeddings import EmbeddingConfig, KernelEmbeddings, embed_positions, part_tables
from .errors import ArtifactError
from .layers import LayerEntry
from .models.registry import (
    TORCHVISION_PREFIX,
    ArchSpec,
    build_model,
    check_arch,
    get_arch,
)
from .models.torchvision_models import torchvision_spec_of_shapes
from .predictor import Predictor
from .safetensors_io import TensorSpec

# Without grad, layers of more kernels than this are regenerated in chunks of this many (bounded activations).
PREDICT_CHUNK = 16384


@dataclass
class Nern:
    """A fitted neural representation of one checkpoint.

    Attributes:
        arch: architecture spec (registry name, kwargs, normalisation preset, input shape).
        layers: represented conv weights in forward order.
        embedding: positional embedding config.
        predictor: the MLP (its ``config`` holds the shape); None when no layer is represented.
        positions: layer name -> int64 (C_out * C_in,) chain position of every kernel.
        scales: layer name -> float32 (C_out,) per-filter scale applied to the predictor's output; layers
            without an entry are regenerated unscaled.
        raw: every tensor of the original state_dict that is neither represented nor coded, unchanged.
        key_order: the original state_dict's key order.
        permute: smoothing permutation method used.
        source: provenance of the original checkpoint (file name, sha256, tensor and parameter counts, bytes).
        raw_convs: conv weights stored raw -> reason.
        history: one record per stage (fit, distill, prune, quantize), each with its full config.
        compression: pruning / quantization state of the predictor ({} when plain float32).
        codes: key -> coded tensor: for a represented layer, the residual added to the predictor's output; for any
            other key, the tensor's value (stored without the predictor).
        coordinate_layers: the layer count of the first coordinate (l / count), when it differs from
            ``len(layers)``: a hybrid file keeps the represented layers where the predictor pays, at the
            coordinates the predictor was fitted with (0: ``len(layers)``).
    """

    arch: ArchSpec
    layers: list[LayerEntry]
    embedding: EmbeddingConfig
    predictor: Predictor | None
    positions: dict[str, Tensor]
    scales: dict[str, Tensor]
    raw: dict[str, Tensor]
    key_order: list[str]
    permute: str
    source: dict[str, Any] = field(default_factory=dict)
    raw_convs: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    compression: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, QuantizedTensor] = field(default_factory=dict)
    coordinate_layers: int = 0

    @property
    def num_layers(self) -> int:
        """The layer count of the coordinates (see ``coordinate_layers``)."""
        return self.coordinate_layers or len(self.layers)

    def layer(self, name: str) -> LayerEntry:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def embeddings_at(self, entry: LayerEntry, positions: Tensor) -> Tensor:
        """Embeddings of the given positions of one layer: float32 (len(positions), embedding.dim)."""
        return embed_positions(
            entry.layer_index, self.num_layers, positions, c_out=entry.c_out, c_in=entry.c_in, config=self.embedding
        )

    def position_embeddings(self, entry: LayerEntry) -> Tensor:
        """Embeddings of every position 0..N-1 of one layer: float32 (C_out * C_in, embedding.dim)."""
        return self.embeddings_at(entry, torch.arange(entry.num_kernels, dtype=torch.int64))

    def layer_embeddings(self, entry: LayerEntry) -> Tensor:
        """Embeddings of every kernel of one layer (kernel i at ``positions[i]``): float32 (C_out * C_in, dim)."""
        return self.embeddings_at(entry, self.positions[entry.name])

    def kernel_embeddings(self, entries: list[LayerEntry]) -> KernelEmbeddings:
        """The embeddings of the kernels of ``entries``, concatenated, looked up when indexed (``KernelEmbeddings``)."""
        layers = [(e.layer_index, e.c_out, e.c_in, self.positions[e.name]) for e in entries]
        return KernelEmbeddings(layers, self.num_layers, self.embedding)

    @torch.no_grad()
    def predict_at(self, entry: LayerEntry, positions: Tensor) -> Tensor:
        """The predictor's kernels at the given positions of one layer, float32 (len(positions), k*k) on the
        predictor's device; computed ``PREDICT_CHUNK`` positions at a time (no gradient)."""
        return self._predict(entry, positions)

    def _predict(self, entry: LayerEntry, positions: Tensor) -> Tensor:
        if self.predictor is None:
            raise ArtifactError(f"layer {entry.name!r} is represented but the Nern has no predictor")
        device = next(self.predictor.parameters()).device
        if torch.is_grad_enabled():
            return self.predictor(self.embeddings_at(entry, positions).to(device), entry.kernel_size)
        # Without grad (expand, evaluation), the separable first layer: per-filter and per-channel rows, summed.
        first, second = (part.to(device) for part in part_tables(
            entry.layer_index, self.num_layers, c_out=entry.c_out, c_in=entry.c_in, config=self.embedding))  # fmt: skip
        kernels = []
        for chunk in positions.to(device=device, dtype=torch.int64).split(PREDICT_CHUNK):
            filters = torch.div(chunk, entry.c_in, rounding_mode="floor")
            features = self.predictor.features_from_parts(first, second, filters, chunk - filters * entry.c_in)
            kernels.append(self.predictor.head(features, entry.kernel_size))
        return torch.cat(kernels)

    def regenerate_layer(self, entry: LayerEntry, embeddings: Tensor | None = None) -> Tensor:
        """The predictor's output for one represented layer, shape ``entry.shape`` (differentiable when grad is
        enabled); its stored weight adds ``codes[entry.name]`` when the layer has a residual (see ``expand``).
        Without grad, large layers are regenerated ``PREDICT_CHUNK`` kernels at a time."""
        if self.predictor is None:
            raise ArtifactError(f"layer {entry.name!r} is represented but the Nern has no predictor")
        device = next(self.predictor.parameters()).device
        if embeddings is None:
            kernels = self._predict(entry, self.positions[entry.name])
        else:
            kernels = self.predictor(embeddings.to(device), entry.kernel_size)
        weight = kernels.view(entry.c_out, entry.c_in, entry.kernel_size, entry.kernel_size)
        scale = self.scales.get(entry.name)
        return weight if scale is None else weight * scale.to(device).view(-1, 1, 1, 1)

    def conv_parameters(self) -> int:
        """Number of weights in the represented conv layers."""
        return sum(entry.num_weights for entry in self.layers)

    def predictor_parameters(self) -> int:
        return 0 if self.predictor is None else self.predictor.num_parameters()

    def storage(self, key: str) -> str:
        """How a state_dict key is stored: "predicted", "predicted+residual", "coded" or "raw"."""
        represented = any(entry.name == key for entry in self.layers)
        if represented:
            return "predicted+residual" if key in self.codes else "predicted"
        return "coded" if key in self.codes else "raw"

    def conv_ratio(self) -> float:
        """Predictor parameters / represented conv weights (the papers' "size"); 0 when nothing is represented."""
        conv = self.conv_parameters()
        return self.predictor_parameters() / conv if conv else 0.0


def filter_scales(weight: Tensor) -> Tensor:
    """Per-filter RMS of a conv weight: float32 (C_out,). An all-zero filter gets scale 0 (regenerated exactly)."""
    return weight.detach().to(torch.float32).flatten(1).pow(2).mean(dim=1).sqrt()


def normalised_kernels(weight: Tensor, scales: Tensor | None) -> Tensor:
    """The predictor's targets: kernels divided by their filter's scale, float32 (C_out * C_in, k*k)."""
    c_out, c_in, kh, kw = weight.shape
    if scales is None:
        return weight.detach().to(torch.float32).reshape(c_out * c_in, kh * kw)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).view(-1, 1, 1, 1)
    return (weight.detach().to(torch.float32) / safe).reshape(c_out * c_in, kh * kw)


# ------------------------------------------------------------------------------------------------ regeneration
def expand(nern: Nern, *, device: str = "auto") -> Iterator[tuple[str, Tensor]]:
    """Yield every tensor of the original state_dict, in its original order, regenerating represented layers.

    One represented layer is regenerated at a time, so peak memory holds one layer's kernels rather than the whole
    model twice.

    Args:
        nern: the representation.
        device: where the predictor runs (auto | cpu | cuda[:N]); tensors are yielded on the CPU.

    Yields:
        (state_dict key, tensor) pairs; represented conv weights are float32 with their original shape.

    Example:
        >>> state_dict = dict(expand(load_artifact("resnet20.nern")))
    """
    torch_device = resolve_device(device)
    if nern.predictor is not None:
        nern.predictor.to(torch_device).eval()
    represented = {entry.name: entry for entry in nern.layers}
    try:
        with torch.inference_mode():
            for key in nern.key_order:
                if key in represented:
                    weight = nern.regenerate_layer(represented[key]).cpu()
                    yield key, weight + nern.codes[key].dequantize() if key in nern.codes else weight
                elif key in nern.codes:
                    yield key, nern.codes[key].dequantize()
                else:
                    yield key, nern.raw[key]
    finally:
        if nern.predictor is not None:
            nern.predictor.cpu()


def expand_state_dict(nern: Nern, *, device: str = "auto") -> dict[str, Tensor]:
    """The whole regenerated state_dict (convenience over ``expand``)."""
    return dict(expand(nern, device=device))


def expand_model(nern: Nern, *, device: str = "auto") -> nn.Module:
    """The architecture with regenerated weights, loaded strictly, in eval mode, on the CPU.

    Raises:
        UsageError: the architecture is a user builder read from an untrusted file (see ``registry.check_arch``).
    """
    check_arch(nern.arch)  # before regenerating anything
    return build_model(nern.arch, expand_state_dict(nern, device=device))


def tensor_specs(nern: Nern) -> list[TensorSpec]:
    """(key, dtype, shape) of every tensor ``expand`` yields, without regenerating anything."""
    represented = {entry.name: entry for entry in nern.layers}
    specs = []
    for key in nern.key_order:
        if key in represented:
            specs.append((key, torch.float32, represented[key].shape))
        elif key in nern.codes:
            specs.append((key, torch.float32, nern.codes[key].shape))
        else:
            specs.append((key, nern.raw[key].dtype, tuple(nern.raw[key].shape)))
    return specs


def fp32_reference_bytes(nern: Nern) -> int:
    """Bytes of the original weights saved as a plain fp32 safetensors state_dict (by the safetensors library
    itself, on zero tensors of the same keys, dtypes and shapes): the denominator of the file ratio."""
    zeros = {
        key: torch.zeros(shape, dtype=torch.float32 if dtype.is_floating_point else dtype)
        for key, dtype, shape in tensor_specs(nern)
    }
    return len(safetensors.torch.save(zeros))


# Entering the meta-device context costs about 180 MB of RSS on first use, more than building a small model for
# real; a model that matches the file holds as many values as the file, so small ones are built on the CPU.
_CPU_CHECK_ELEMENTS = 16_000_000


def check_shapes(nern: Nern) -> None:
    """Refuse a Nern whose tensors do not fit its architecture (keys and shapes), before anything is written.

    Architectures named ``pkg.module:function`` are not imported here, since importing runs the module's code; they
    are checked when the model is built.

    Raises:
        ArtifactError: naming the first key that is unknown to the architecture, missing, or of another shape, or
            an architecture that cannot be built.
        ArchDetectionError: kwargs or an input shape beyond the bounds a file may ask for (``check_arch``).
    """
    name = nern.arch.name
    if nern.arch.is_user_builder():
        return
    check_arch(nern.arch)  # its own one-line message: kwargs beyond a file's bounds
    specs = {key: tuple(shape) for key, _, shape in tensor_specs(nern)}
    if _in_torchvision_index(nern.arch, specs):
        return  # the index's digests say so without importing torchvision (seconds)
    elements = sum(int(torch.Size(shape).numel()) for shape in specs.values())
    device = "cpu" if elements <= _CPU_CHECK_ELEMENTS else "meta"
    try:
        with torch.device(device):
            reference = get_arch(nern.arch).state_dict()
    except Exception as exc:
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


def _in_torchvision_index(arch: ArchSpec, shapes: dict[str, tuple[int, ...]]) -> bool:
    if not arch.name.startswith(TORCHVISION_PREFIX):
        return False
    found = torchvision_spec_of_shapes(arch.name[len(TORCHVISION_PREFIX) :], shapes)
    return found is not None and found.kwargs == arch.kwargs
