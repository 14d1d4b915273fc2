"""``Nern``: the in-memory neural representation of a checkpoint.

It holds everything needed to regenerate the original state_dict: the predictor, the represented layers with
their kernel positions (smoothing permutations) and per-filter scales, and every other tensor raw. The file
layout lives in ``artifact.py``; this module only knows how to turn a Nern back into weights.

Regenerated weight of represented layer L, kernel i = f * C_in + c:
    W[f, c] = scale[f] * predictor(embedding(L, position[i]))
An optional per-filter scale (the RMS of the filter's original weights, C_out floats per layer) lets the
predictor learn unit-scale kernels; without it (the default, measured better) scale[f] is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .embeddings import EmbeddingConfig, kernel_coordinates, positional_embedding
from .layers import LayerEntry
from .models.registry import ArchSpec
from .predictor import Predictor


@dataclass
class Nern:
    """A fitted neural representation of one checkpoint.

    Attributes:
        arch: architecture spec (registry name, kwargs, normalisation preset, input shape).
        layers: represented conv weights in forward order.
        embedding: positional embedding config.
        predictor: the MLP (its ``config`` holds the shape).
        positions: layer name -> int64 (C_out * C_in,) chain position of every kernel.
        scales: layer name -> float32 (C_out,) per-filter scale applied to the predictor's output; layers
            without an entry are regenerated unscaled.
        raw: every other tensor of the original state_dict, unchanged.
        key_order: the original state_dict's key order.
        permute: smoothing permutation method used.
        source: provenance of the original checkpoint (file name, sha256, tensor and parameter counts, bytes).
        raw_convs: conv weights stored raw -> reason.
        history: one record per stage (fit, distill, prune, quantize), each with its full config.
        compression: pruning / quantization state of the predictor ({} when plain float32).
    """

    arch: ArchSpec
    layers: list[LayerEntry]
    embedding: EmbeddingConfig
    predictor: Predictor
    positions: dict[str, Tensor]
    scales: dict[str, Tensor]
    raw: dict[str, Tensor]
    key_order: list[str]
    permute: str
    source: dict[str, Any] = field(default_factory=dict)
    raw_convs: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    compression: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> LayerEntry:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def position_embeddings(self, entry: LayerEntry) -> Tensor:
        """Embeddings of every position 0..N-1 of one layer: float32 (C_out * C_in, embedding.dim)."""
        every = torch.arange(entry.num_kernels, dtype=torch.int64)
        coords = kernel_coordinates(entry.layer_index, self.num_layers, every, c_out=entry.c_out, c_in=entry.c_in)
        return positional_embedding(coords, self.embedding)

    def layer_embeddings(self, entry: LayerEntry) -> Tensor:
        """Embeddings of every kernel of one layer (kernel i at ``positions[i]``): float32 (C_out * C_in, dim)."""
        return self.position_embeddings(entry)[self.positions[entry.name]]

    def regenerate_layer(self, entry: LayerEntry, embeddings: Tensor | None = None) -> Tensor:
        """Weight of one represented layer, shape ``entry.shape`` (differentiable when grad is enabled)."""
        if embeddings is None:
            embeddings = self.layer_embeddings(entry)
        device = next(self.predictor.parameters()).device
        kernels = self.predictor(embeddings.to(device), entry.kernel_size)
        weight = kernels.view(entry.c_out, entry.c_in, entry.kernel_size, entry.kernel_size)
        scale = self.scales.get(entry.name)
        return weight if scale is None else weight * scale.to(device).view(-1, 1, 1, 1)

    def conv_parameters(self) -> int:
        """Number of weights in the represented conv layers."""
        return sum(entry.num_weights for entry in self.layers)

    def predictor_parameters(self) -> int:
        return self.predictor.num_parameters()

    def conv_ratio(self) -> float:
        """Predictor parameters / represented conv weights (the papers' "size")."""
        return self.predictor_parameters() / self.conv_parameters()


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
