"""Smoothing permutations: give neighbouring coordinates to similar kernels.

Pretrained kernels are not smooth in (filter, channel), so a coordinate MLP fits them badly. NeRN orders the
kernels of a layer as a greedy nearest-neighbour chain (start at kernel 0, repeatedly jump to the most
cosine-similar unvisited kernel) and gives each kernel the coordinate of its *position* in the chain. Weights are
never moved, so decoding needs the positions but nothing has to be undone afterwards.

- ``crossfilter``: one chain over all C_out * C_in kernels of the layer.
- ``infilter``: a chain over the channels inside each filter, then a chain over the filters.
- ``none``: position = index.

The exact chain costs O(n^2) time. Sets of at most ``BLOCK`` kernels (every layer of a CIFAR ResNet) get it as
described. Larger sets (ImageNet networks: up to 262,144 3x3 kernels in one layer) are first cut by recursive
bisection: sort the (unit) kernels by their projection on the set's principal direction, split at the median and
recurse until every part holds at most ``BLOCK`` kernels. Each half is oriented so that its low end faces the part
visited before it, so consecutive parts are neighbours. The exact chain then runs inside each part, starting from
the kernel most similar to the previous part's last one. That is O(n log n) time for the bisection, O(n * BLOCK)
for the chains, and O(n + BLOCK^2) memory; similar kernels still end up close, but the chain is no longer the
global greedy one. 1x1 kernels (one value: cosine similarity is only a sign) are sorted by value at any size.

A chain is only a starting point. Once a predictor has been fitted to it, :func:`assign_positions` moves kernels
to the positions whose predicted kernels they are closest to (an optimal matching, so never a worse fit), and
fitting goes on from there: ``fit`` alternates the two (``FitConfig.reassign_every``). The positions stay a
bijection, so the file pays nothing for this.

Every function returns ``positions``: int64 (N,), positions[i] = chain position of kernel i (a bijection on 0..N-1).
Long computations report ``on_progress(done, total)`` (kernels of the layer placed so far) between blocks; a
callback that raises (e.g. on Ctrl-C) stops the computation there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.sparse.linalg import svds
from torch import Tensor

PERMUTATIONS = ("crossfilter", "infilter", "none")

ProgressCallback = Callable[[int, int], None]

# Sets of more kernels than this are cut into blocks of at most this many before chaining (see the module
# docstring). Every layer of ResNet-20/56 (at most 64 x 64 kernels) is at most one block: their chains are exact.
BLOCK = 4096
# greedy_chain called directly on more rows than this builds its chain from one matrix-vector product per step
# instead of the dense similarity matrix (N^2 floats).
_DENSE_LIMIT = 8192
# assign_positions compares every kernel with every position of its layer (N^2 distances, and N^2 int64 indices
# while choosing candidates); larger layers are matched within chain segments of this many positions, which bounds
# that memory at a few hundred MB.
_ASSIGN_SEGMENT = 4096
# The infilter chains of many filters run as one batch of similarity matrices of at most this many floats.
_BATCH_FLOATS = 1 << 24


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _gram(unit: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(unit))
    return (tensor @ tensor.T).numpy()


def greedy_chain(vectors: np.ndarray, start: int = 0) -> np.ndarray:
    """Visiting order of the exact greedy nearest-neighbour chain by cosine similarity (O(N^2) time).

    Args:
        vectors: float (N, D). With D == 1 cosine similarity is only a sign, so rows are sorted by value.
        start: the row the chain starts at.

    Returns:
        int64 (N,) order: order[p] = row visited at step p.
    """
    count = vectors.shape[0]
    if count <= 2:
        order = np.arange(count, dtype=np.int64)
        return order if start == 0 else np.roll(order, -start)
    if vectors.shape[1] == 1:
        return np.argsort(vectors[:, 0], kind="stable").astype(np.int64)
    unit = _normalise_rows(vectors.astype(np.float32))
    order = np.empty(count, dtype=np.int64)
    order[0] = start
    # Visited kernels are excluded by a penalty vector added to each row read: one contiguous pass per step.
    penalty = np.zeros(count, dtype=np.float32)
    penalty[start] = -np.inf
    # torch for the product: numpy's BLAS here can be an order of magnitude slower on this shape.
    similarity = _gram(unit) if count <= _DENSE_LIMIT else None
    current = start
    for step in range(1, count):
        row = similarity[current] if similarity is not None else unit @ unit[current]
        current = int(np.argmax(row + penalty))
        order[step] = current
        penalty[current] = -np.inf
    return order


def chain_order(vectors: np.ndarray, *, on_progress: ProgressCallback | None = None) -> np.ndarray:
    """Visiting order of a nearest-neighbour chain by cosine similarity: the exact greedy chain
    (:func:`greedy_chain`, from row 0) for at most ``BLOCK`` rows, the blocked chain of the module docstring above.

    Args:
        vectors: float (N, D).
        on_progress: called as ``on_progress(rows placed, N)`` after each block.

    Returns:
        int64 (N,) order: order[p] = row visited at step p.
    """
    count = vectors.shape[0]
    if count <= BLOCK or vectors.shape[1] == 1:
        order = greedy_chain(vectors)
        if on_progress is not None:
            on_progress(count, count)
        return order
    vectors = vectors.astype(np.float32, copy=False)
    unit = _normalise_rows(vectors)
    order = np.empty(count, dtype=np.int64)
    done = 0
    for block in _bisect(unit, BLOCK):
        start = 0 if done == 0 else int(np.argmax(unit[block] @ unit[order[done - 1]]))
        order[done : done + len(block)] = block[greedy_chain(vectors[block], start)]
        done += len(block)
        if on_progress is not None:
            on_progress(done, count)
    return order


def _bisect(unit: np.ndarray, limit: int) -> list[np.ndarray]:
    """Recursive bisection of the rows of ``unit`` along principal directions into parts of at most ``limit``
    rows, in visiting order: int64 row indices of each part."""
    parts: list[np.ndarray] = []

    def split(rows: np.ndarray, anchor: np.ndarray | None) -> None:
        if len(rows) <= limit:
            parts.append(rows)
            return
        members = unit[rows].astype(np.float64)
        centre = members.mean(axis=0)
        members -= centre
        direction = _principal_direction(members)
        if anchor is not None and float(direction @ (centre - anchor)) < 0:
            direction = -direction  # the low end faces the part visited before this one
        by_projection = rows[np.argsort(members @ direction, kind="stable")]
        half = len(rows) // 2
        first, second = by_projection[:half], by_projection[half:]
        split(first, anchor)
        split(second, unit[first].mean(axis=0, dtype=np.float64))

    split(np.arange(unit.shape[0], dtype=np.int64), None)
    return parts


def _principal_direction(centred: np.ndarray) -> np.ndarray:
    """Unit vector (D,) of the largest variance of the rows of ``centred`` (float64 (N, D), zero mean)."""
    dim = centred.shape[1]
    if dim <= 256:  # the D x D covariance is cheap: its exact top eigenvector
        return np.linalg.eigh(centred.T @ centred)[1][:, -1]
    # Wide rows (infilter's filter chain): a truncated SVD (ARPACK, from a fixed start: deterministic).
    start = np.ones(min(centred.shape), dtype=np.float64)
    return svds(centred, k=1, v0=start, random_state=0)[2][0]


def _batched_chains(vectors: np.ndarray, on_progress: ProgressCallback | None = None) -> np.ndarray:
    """Chains for a batch of independent sets: vectors (B, N, D) -> orders (B, N). The similarity matrices are
    built for at most ``_BATCH_FLOATS`` floats at a time; sets of more than ``BLOCK`` rows are chained one by one
    (:func:`chain_order`). ``on_progress(sets done, B)`` is called after each group of sets."""
    batch, count, dim = vectors.shape
    if count > BLOCK and dim > 1:
        orders = np.empty((batch, count), dtype=np.int64)
        for index in range(batch):
            orders[index] = chain_order(vectors[index])
            if on_progress is not None:
                on_progress(index + 1, batch)
        return orders
    chunk = max(1, _BATCH_FLOATS // max(count * count, 1))
    if batch > chunk:
        orders = np.empty((batch, count), dtype=np.int64)
        for start in range(0, batch, chunk):
            orders[start : start + chunk] = _batched_chains(vectors[start : start + chunk])
            if on_progress is not None:
                on_progress(min(start + chunk, batch), batch)
        return orders
    orders = _dense_batched_chains(vectors)
    if on_progress is not None:
        on_progress(batch, batch)
    return orders


def _dense_batched_chains(vectors: np.ndarray) -> np.ndarray:
    """Exact greedy chains, from row 0, for a batch of independent sets: vectors (B, N, D) -> orders (B, N)."""
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


def compute_positions(
    weight: Tensor, method: str = "crossfilter", *, on_progress: ProgressCallback | None = None
) -> Tensor:
    """Chain position of every kernel of a conv weight.

    Args:
        weight: float (C_out, C_in, kh, kw); kernel i = f * C_in + c.
        method: one of ``PERMUTATIONS``.
        on_progress: called as ``on_progress(kernels placed, C_out * C_in)`` between blocks of the computation
            and at its end; an exception it raises stops the computation.

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
        if on_progress is not None:
            on_progress(count, count)
        return torch.arange(count, dtype=torch.int64)
    kernels = weight.detach().to(torch.float32).reshape(c_out, c_in, -1).cpu().numpy()
    if method == "crossfilter":
        order = chain_order(kernels.reshape(count, -1), on_progress=on_progress)
        return torch.from_numpy(_inverse(order))
    # infilter: channels ordered inside every filter, then filters ordered by their reordered contents.
    filters_done = None if on_progress is None else (lambda done, filters: on_progress(done * c_in, count))
    channel_orders = _batched_chains(kernels, filters_done)  # (C_out, C_in)
    reordered = np.take_along_axis(kernels, channel_orders[:, :, None], axis=1)
    filter_order = chain_order(reordered.reshape(c_out, -1))
    if on_progress is not None:
        on_progress(count, count)
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


def assign_positions(
    targets: Tensor,
    predicted: Tensor,
    positions: Tensor,
    *,
    weights: Tensor | None = None,
    candidates: int = 64,
    swap_candidates: int = 16,
    swap_passes: int = 8,
) -> Tensor:
    """Re-assign kernels to positions so that the predictor's outputs fit them better.

    The cost of kernel i at position p is weights_i * ||targets_i - predicted_p||^2; the new positions have a lower
    (never a higher) total. Two steps, each never worse than its start:

    1. an exact minimum-cost perfect matching on a sparse graph: kernel i may take position p when p is among the
       ``candidates`` cheapest positions for i *and* i among the ``candidates`` cheapest kernels for p, or keep its
       position. Requiring both bounds how many kernels compete for one position, which keeps the matching fast
       even when the predictor is poor and every kernel prefers the same few positions;
    2. passes of pairwise swaps, best gain first, between each kernel and the kernels at its ``swap_candidates``
       cheapest positions: they reach what the mutual graph leaves out.

    Args:
        targets: float (N, D), kernel i's target values (the predictor's output units).
        predicted: float (N, D), the predictor's output at position p, for p = 0..N-1.
        positions: int64 (N,), the current position of each kernel.
        weights: float (N,), the weight of kernel i's squared error; None weighs all alike.
        candidates, swap_candidates, swap_passes: the search's breadth.

    Returns:
        int64 (N,) new positions, a permutation of 0..N-1.
    """
    count = targets.shape[0]
    if count > _ASSIGN_SEGMENT:  # match within contiguous stretches of the chain
        new = positions.clone()
        order = torch.argsort(positions)
        for start in range(0, count, _ASSIGN_SEGMENT):
            kernels = order[start : start + _ASSIGN_SEGMENT]
            slots = positions[kernels]
            local = assign_positions(
                targets[kernels], predicted[slots], torch.arange(len(kernels)),
                weights=None if weights is None else weights[kernels], candidates=candidates,
                swap_candidates=swap_candidates, swap_passes=swap_passes,
            )  # fmt: skip
            new[kernels] = slots[local]
        return new
    if count <= 1:
        return positions.clone()
    device = predicted.device  # the N^2 search runs where the predictions are (a GPU when fitting on one)
    weights = torch.ones(count, device=device) if weights is None else weights.detach().to(device)
    # Which positions are cheap for which kernels: from float32 distances (|t|^2 - 2 t.p + |p|^2), N^2 of them.
    t32, p32 = targets.detach().float().to(device), predicted.detach().float()
    squared_norms = t32.pow(2).sum(1, keepdim=True) + p32.pow(2).sum(1)
    approximate = torch.addmm(squared_norms, t32, p32.T, alpha=-2).mul_(weights.float()[:, None])
    k = min(candidates, count)
    cheapest_slots = _smallest(approximate, k)  # (N, k), cheapest first
    positions = positions.to(torch.int64).cpu()
    edges = None
    if targets.shape[1] > 1:
        edges = torch.zeros(count, count, dtype=torch.bool, device=device)
        edges.scatter_(0, _smallest(approximate.T.contiguous(), k).T, True)
        edges &= torch.zeros_like(edges).scatter_(1, cheapest_slots, True)
        edges[torch.arange(count, device=device), positions.to(device)] = True  # staying is always possible
        edges = tuple(index.cpu() for index in edges.nonzero(as_tuple=True))
    del approximate
    cheapest_slots = cheapest_slots.cpu()
    targets = targets.detach().to(torch.float64).cpu()
    predicted = predicted.detach().to(torch.float64).cpu()
    weights = weights.to(torch.float64).cpu()

    def cost(kernels: Tensor, slots: Tensor) -> Tensor:
        return weights[kernels] * (targets[kernels] - predicted[slots]).pow(2).sum(-1)

    if edges is None:
        # Scalar (1x1) kernels: pairing them in sorted order is the optimal matching for equal weights, and scipy's
        # matcher stalls on the ties of one-dimensional costs.
        matched = torch.empty(count, dtype=torch.int64)
        matched[torch.argsort(targets[:, 0], stable=True)] = torch.argsort(predicted[:, 0], stable=True)
    else:
        matched = _min_cost_matching(*edges, cost, count)
    everyone = torch.arange(count)
    if float(cost(everyone, matched).sum()) > float(cost(everyone, positions).sum()):
        matched = positions  # never accept a worse assignment (rounded costs, unequal weights)
    return _swap_passes(matched, cheapest_slots[:, : min(swap_candidates, k)], cost, swap_passes)


def _smallest(matrix: Tensor, k: int) -> Tensor:
    """Column indices of each row's k smallest entries, smallest first: int64 (rows, k), on ``matrix``'s device.
    On the CPU a partial partition and a sort of the k (numpy) take about a third of the time of ``torch.topk``."""
    if matrix.device.type != "cpu":
        return torch.topk(matrix, k, dim=1, largest=False).indices
    values = matrix.numpy()
    chosen = np.argpartition(values, k - 1, axis=1)[:, :k] if k < values.shape[1] else np.indices(values.shape)[1]
    order = np.argsort(np.take_along_axis(values, chosen, axis=1), axis=1, kind="stable")
    return torch.from_numpy(np.take_along_axis(chosen, order, axis=1).astype(np.int64))


def _min_cost_matching(rows: Tensor, columns: Tensor, cost, count: int) -> Tensor:
    """Exact minimum-cost perfect matching on the edges (rows[e], columns[e]): kernel -> position, int64 (N,)."""
    edge_costs = cost(rows, columns)
    # Integral costs in steps of 1e-6 of the mean: on nearly tied float costs scipy's matching can take minutes
    # where it takes a tenth of a second on these. The + 1 keeps every cost > 0 (a stored zero reads as no edge);
    # every perfect matching has N edges, so the shift does not move the optimum.
    resolution = float(edge_costs.mean()) * 1e-6 or 1.0
    integral = torch.round(edge_costs / resolution) + 1.0
    graph = csr_matrix((integral.numpy(), (rows.numpy(), columns.numpy())), shape=(count, count))
    kernels, slots = min_weight_full_bipartite_matching(graph)
    matched = torch.empty(count, dtype=torch.int64)
    matched[torch.from_numpy(kernels).long()] = torch.from_numpy(slots).long()
    return matched


def _swap_passes(positions: Tensor, candidate_slots: Tensor, cost, passes: int) -> Tensor:
    """Improve an assignment by swapping pairs of kernels: kernel i with the kernel at one of its candidate slots,
    the best gain of each kernel first, each kernel in at most one swap per pass."""
    positions = positions.clone()
    count = positions.shape[0]
    everyone = torch.arange(count)
    for _ in range(passes):
        holder = torch.empty_like(positions)
        holder[positions] = everyone  # the kernel at each position
        partners = holder[candidate_slots]  # (N, s)
        own = cost(everyone, positions)
        gain = own[:, None] + own[partners] - cost(everyone[:, None], candidate_slots)
        gain -= cost(partners, positions[:, None].expand_as(partners))
        best, which = gain.max(dim=1)
        partner = partners[everyone, which].tolist()
        gains = best.tolist()
        taken = [False] * count
        first, second = [], []
        for kernel in torch.argsort(best, descending=True).tolist():
            if gains[kernel] <= 0:
                break
            other = partner[kernel]
            if taken[kernel] or taken[other]:
                continue
            taken[kernel] = taken[other] = True
            first.append(kernel)
            second.append(other)
        if not first:
            break
        a, b = torch.tensor(first), torch.tensor(second)
        positions[a], positions[b] = positions[b].clone(), positions[a].clone()
    return positions
