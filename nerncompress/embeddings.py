"""Kernel coordinates and their sinusoidal positional embedding.

Every kernel of a represented conv layer gets one coordinate (layer, filter, channel), each component
normalised to [0, 1): (l / num_layers, f / C_out, c / C_in). With smoothing permutations the (f, c) used here
is the kernel's *position in the chain*, not its index in the weight tensor (see ``permutations.py``).
The embedding of a coordinate p is, for every component and level k = 0..L-1,
sin(pi * p * b^k) and cos(pi * p * b^k), concatenated: 6 * L values per kernel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .errors import UsageError


@dataclass(frozen=True)
class EmbeddingConfig:
    """How coordinates become predictor inputs.

    Attributes:
        levels: number of frequencies L per coordinate component.
        base: frequency growth b; level k uses pi * b**k. b > 1 gives high frequencies (NeRN's code default,
            20 levels of 1.25, best with smoothing permutations); b < 1 gives a smooth embedding.
    """

    levels: int = 20
    base: float = 1.25

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise UsageError(f"embedding levels must be >= 1, got {self.levels}")
        if not self.base > 0:
            raise UsageError(f"embedding base must be > 0, got {self.base}")

    @property
    def dim(self) -> int:
        """Width of one embedding vector: 3 components x (sin, cos) x levels."""
        return 3 * 2 * self.levels

    def to_dict(self) -> dict:
        return asdict(self)


def kernel_coordinates(
    layer_index: int, num_layers: int, positions: Tensor, *, c_out: int, c_in: int
) -> Tensor:
    """Normalised (layer, filter, channel) coordinates of the kernels of one layer.

    Args:
        layer_index: index of the layer among the represented layers.
        num_layers: number of represented layers.
        positions: int64 (N,) chain position of each kernel, N = c_out * c_in, kernel i = f * c_in + c.
        c_out: output channels of the layer.
        c_in: input channels per group of the layer.

    Returns:
        float32 (N, 3) coordinates in [0, 1).
    """
    positions = positions.to(torch.int64)
    filters = torch.div(positions, c_in, rounding_mode="floor").to(torch.float32) / c_out
    channels = torch.remainder(positions, c_in).to(torch.float32) / c_in
    layers = torch.full_like(filters, layer_index / num_layers)
    return torch.stack([layers, filters, channels], dim=1)


def positional_embedding(coordinates: Tensor, config: EmbeddingConfig) -> Tensor:
    """Sinusoidal embedding of coordinates.

    Args:
        coordinates: float32 (N, 3).
        config: levels and base.

    Returns:
        float32 (N, 6 * levels): for each component, ``levels`` sines then ``levels`` cosines.
    """
    frequencies = math.pi * config.base ** torch.arange(config.levels, dtype=torch.float64)
    angles = coordinates.to(torch.float64).unsqueeze(-1) * frequencies  # (N, 3, L)
    embedded = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (N, 3, 2L)
    return embedded.reshape(coordinates.shape[0], -1).to(torch.float32)
