"""Kernel coordinates and their sinusoidal positional embedding.

Every kernel of a represented conv layer gets one coordinate (layer, filter, channel), each component
normalised to [0, 1): (l / num_layers, f / C_out, c / C_in). With smoothing permutations the (f, c) used here
is the kernel's *position in the chain*, not its index in the weight tensor (see ``permutations.py``).
The embedding of a coordinate p is, for every component and level k = 0..L-1,
sin(pi * p * b^k) and cos(pi * p * b^k), concatenated: 6 * L values per kernel.

The embedding is separable: its (layer, filter) part depends on the filter coordinate only and its channel part on
the channel coordinate only. :func:`embed_positions` and :class:`KernelEmbeddings` therefore compute the sines and
cosines once per filter and once per channel of a layer, and assemble a kernel's embedding by looking its two
parts up: the same values as :func:`positional_embedding` of :func:`kernel_coordinates`, without holding an
(N, 6L) float64 intermediate, or (``KernelEmbeddings``) any per-kernel embedding at all, for layers of millions of
kernels.
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


def part_tables(
    layer_index: int, num_layers: int, *, c_out: int, c_in: int, config: EmbeddingConfig
) -> tuple[Tensor, Tensor]:
    """The two parts of a layer's embeddings: float32 (C_out, 4L) (layer, filter) of each filter and (C_in, 2L)
    channel of each channel. The kernel at position p embeds as ``cat(first[p // c_in], second[p % c_in])``."""
    first = kernel_coordinates(layer_index, num_layers, torch.arange(c_out) * c_in, c_out=c_out, c_in=c_in)
    second = kernel_coordinates(layer_index, num_layers, torch.arange(c_in), c_out=c_out, c_in=c_in)
    split = 4 * config.levels
    return positional_embedding(first, config)[:, :split], positional_embedding(second, config)[:, split:]


def embed_positions(
    layer_index: int, num_layers: int, positions: Tensor, *, c_out: int, c_in: int, config: EmbeddingConfig
) -> Tensor:
    """``positional_embedding(kernel_coordinates(...), config)`` of the given positions of one layer, from per-filter
    and per-channel tables: float32 (len(positions), 6 * levels)."""
    first, second = part_tables(layer_index, num_layers, c_out=c_out, c_in=c_in, config=config)
    positions = positions.to(torch.int64)
    return torch.cat([first[torch.div(positions, c_in, rounding_mode="floor")], second[positions % c_in]], dim=1)


class KernelEmbeddings:
    """The embeddings of the kernels of several layers, concatenated in layer order, looked up when indexed.

    Holds the per-filter and per-channel tables of every layer and two int32 row numbers per kernel, instead of
    6 * levels floats per kernel. ``embeddings[index]`` (index: int64 (B,) kernel numbers) is float32 (B, 6L), equal
    to rows of ``torch.cat([positional_embedding(kernel_coordinates(...)) for each layer])``.

    Args:
        layers: (layer_index, c_out, c_in, positions) of each layer, positions int64 (c_out * c_in,).
        num_layers: the layer count of the coordinates.
        config: the embedding.
    """

    def __init__(self, layers: list[tuple[int, int, int, Tensor]], num_layers: int, config: EmbeddingConfig) -> None:
        firsts, seconds = [], []
        self._layers = []  # (first row offset, second row offset, c_in, kernel offset, kernel count)
        rows = [0, 0]
        kernels = 0
        for layer_index, c_out, c_in, _ in layers:
            first, second = part_tables(layer_index, num_layers, c_out=c_out, c_in=c_in, config=config)
            firsts.append(first)
            seconds.append(second)
            self._layers.append((rows[0], rows[1], c_in, kernels, c_out * c_in))
            rows[0] += c_out
            rows[1] += c_in
            kernels += c_out * c_in
        self.first = torch.cat(firsts)
        self.second = torch.cat(seconds)
        self.first_rows = torch.empty(kernels, dtype=torch.int32)
        self.second_rows = torch.empty(kernels, dtype=torch.int32)
        for number, (*_, positions) in enumerate(layers):
            self.set_positions(number, positions)

    def set_positions(self, number: int, positions: Tensor) -> None:
        """Give the kernels of the ``number``-th layer new positions: int64 (c_out * c_in,)."""
        first_offset, second_offset, c_in, start, count = self._layers[number]
        positions = positions.to(device=self.first_rows.device, dtype=torch.int64)
        filters = torch.div(positions, c_in, rounding_mode="floor")
        self.first_rows[start : start + count] = (filters + first_offset).to(torch.int32)
        self.second_rows[start : start + count] = (positions - filters * c_in + second_offset).to(torch.int32)

    def to(self, device: torch.device | str) -> KernelEmbeddings:
        """Move the tables and row numbers to ``device`` (in place); returns self."""
        for name in ("first", "second", "first_rows", "second_rows"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __len__(self) -> int:
        return self.first_rows.shape[0]

    def __getitem__(self, index: Tensor) -> Tensor:
        return torch.cat([self.first[self.first_rows[index]], self.second[self.second_rows[index]]], dim=1)

