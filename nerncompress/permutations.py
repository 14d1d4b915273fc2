"""Smoothing permutations: give neighbouring coordinates to similar kernels.

Pretrained kernels are not smooth in (filter, channel), so a coordinate MLP fits them badly. NeRN orders the
kernels of a layer as a greedy nearest-neighbour chain (start at kernel 0, repeatedly jump to the most
cosine-similar unvisited kernel) and gives each kernel the coordinate of its *position* in the chain. Weights are
never moved, so decoding needs the positions but nothing has to be undone afterwards.

- ``crossfilter``: one chain over all C_out * C_in kernels of the layer.
- ``infilter``: a chain over the channels inside each filter, then a chain over the filters.
- ``none``: position = index.

Every function returns ``positions``: int64 (N,), positions[i] = chain position of kernel i (a bijection on 0..N-1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

PERMUTATIONS = ("crossfilter", "infilter", "none")

# Above this many kernels the dense similarity matrix (N^2 floats) would not fit comfortably in memory,
# so the chain is built from one matrix-vector product per step instead.
_DENSE_LIMIT = 8192


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _gram(unit: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(unit))
    return (tensor @ tensor.T).numpy()


def greedy_chain(vectors: np.ndarray) -> np.ndarray:
    """Visiting order of a greedy nearest-neighbour chain by cosine similarity, starting at row 0.

    Args:
        vectors: float (N, D). With D == 1 cosine similarity is only a sign, so rows are sorted by value.

    Returns:
        int64 (N,) order: order[p] = row visited at step p.
    """
    count = vectors.shape[0]
    if count <= 2:
        return np.arange(count, dtype=np.int64)
    if vectors.shape[1] == 1:
        return np.argsort(vectors[:, 0], kind="stable").astype(np.int64)
    unit = _normalise_rows(vectors.astype(np.float32))
    order = np.empty(count, dtype=np.int64)
    order[0] = 0
    # Visited kernels are excluded by a penalty vector added to each row read: one contiguous pass per step.
    penalty = np.zeros(count, dtype=np.float32)
    penalty[0] = -np.inf
    # torch for the product: numpy's BLAS here can be an order of magnitude slower on this shape.
    similarity = _gram(unit) if count <= _DENSE_LIMIT else None
    current = 0
    for step in range(1, count):
        row = similarity[current] if similarity is not None else unit @ unit[current]
        current = int(np.argmax(row + penalty))
        order[step] = current
        penalty[current] = -np.inf
    return order


def _batched_chains(vectors: np.ndarray) -> np.ndarray:
    """Greedy chains for a batch of independent sets: vectors (B, N, D) -> orders (B, N)."""
    batch, count, dim = vectors.shape
    if count <= 2:
        return np.tile(np.arange(count, dtype=np.int64), (batch, 1))
    if dim == 1:
        return np.argsort(vectors[:, :, 0], axis=1, kind="stable").astype(np.int64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=2, keepdims=True), 1e-12)
    tensor = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    similarity = torch.bmm(tensor, tensor.transpose(1, 2)).numpy()
    rows = np.arange(batch)
    orders = np.zeros((batch, count), dtype=np.int64)
    penalty = np.zeros((batch, count), dtype=np.float32)
    penalty[:, 0] = -np.inf
    current = np.zeros(batch, dtype=np.int64)
    for step in range(1, count):
        current = np.argmax(similarity[rows, current] + penalty, axis=1)
        orders[:, step] = current
        penalty[rows, current] = -np.inf
    return orders


def _inverse(order: np.ndarray) -> np.ndarray:
    positions = np.empty_like(order)
    positions[order] = np.arange(order.shape[0], dtype=np.int64)
    return positions


def compute_positions(weight: Tensor, method: str = "crossfilter") -> Tensor:
    """Chain position of every kernel of a conv weight.

    Args:
        weight: float (C_out, C_in, kh, kw); kernel i = f * C_in + c.
        method: one of ``PERMUTATIONS``.

    Returns:
        int64 (C_out * C_in,) positions, a permutation of 0..N-1.

    Example:
        >>> positions = compute_positions(torch.randn(16, 8, 3, 3), "crossfilter")
    """
    if method not in PERMUTATIONS:
        raise ValueError(f"unknown permutation {method!r}: choose one of {', '.join(PERMUTATIONS)}")
    c_out, c_in = weight.shape[:2]
    count = c_out * c_in
    if method == "none":
        return torch.arange(count, dtype=torch.int64)
    kernels = weight.detach().to(torch.float32).reshape(c_out, c_in, -1).cpu().numpy()
    if method == "crossfilter":
        order = greedy_chain(kernels.reshape(count, -1))
        return torch.from_numpy(_inverse(order))
    # infilter: channels ordered inside every filter, then filters ordered by their reordered contents.
    channel_orders = _batched_chains(kernels)  # (C_out, C_in)
    reordered = np.take_along_axis(kernels, channel_orders[:, :, None], axis=1)
    filter_order = greedy_chain(reordered.reshape(c_out, -1))
    filter_position = _inverse(filter_order)  # (C_out,)
    channel_position = np.argsort(channel_orders, axis=1)  # inverse of each row
    positions = filter_position[:, None] * c_in + channel_position
    return torch.from_numpy(positions.reshape(-1).astype(np.int64))


def neighbour_similarity(weight: Tensor, positions: Tensor) -> float:
    """Mean cosine similarity of kernels that are adjacent in position order (a smoothness score)."""
    c_out, c_in = weight.shape[:2]
    kernels = weight.detach().to(torch.float32).reshape(c_out * c_in, -1)
    order = torch.argsort(positions)
    ordered = torch.nn.functional.normalize(kernels[order], dim=1)
    return float((ordered[1:] * ordered[:-1]).sum(dim=1).mean())
