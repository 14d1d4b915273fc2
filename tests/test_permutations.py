import itertools
import time

import pytest
import torch

from nerncompress import permutations
from nerncompress.permutations import (
    PERMUTATIONS,
    assign_positions,
    compute_positions,
    greedy_chain,
    neighbour_similarity,
)


def _smooth_then_shuffled(c_out=12, c_in=10, seed=0):
    """Kernels that vary smoothly along a hidden order, stored shuffled: a permutation can find the order."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 3, c_out * c_in)
    base = torch.stack([torch.sin(t * (i + 1) + i) for i in range(9)], dim=1)
    base = base + 0.01 * torch.randn(base.shape, generator=g)
    shuffled = base[torch.randperm(c_out * c_in, generator=g)]
    return shuffled.view(c_out, c_in, 3, 3)


@pytest.mark.parametrize("method", PERMUTATIONS)
def test_positions_are_a_bijection(method):
    weight = torch.randn(16, 8, 3, 3)
    positions = compute_positions(weight, method)
    assert positions.dtype == torch.int64
    assert sorted(positions.tolist()) == list(range(16 * 8))


@pytest.mark.parametrize("method", ["crossfilter", "infilter"])
def test_ordering_raises_neighbour_similarity(method):
    weight = _smooth_then_shuffled()
    identity = torch.arange(weight.shape[0] * weight.shape[1])
    before = neighbour_similarity(weight, identity)
    after = neighbour_similarity(weight, compute_positions(weight, method))
    assert after > before + 0.1


def test_crossfilter_chain_starts_at_zero_and_follows_nearest_neighbour():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.5, 0.5]]).numpy()
    assert greedy_chain(vectors).tolist() == [0, 2, 3, 1]


def test_infilter_keeps_each_filter_contiguous():
    weight = torch.randn(6, 5, 3, 3)
    positions = compute_positions(weight, "infilter")
    filters = torch.div(positions.view(6, 5), 5, rounding_mode="floor")
    assert all(len(set(row.tolist())) == 1 for row in filters)


def test_one_by_one_kernels_are_sorted_by_value():
    weight = torch.randn(4, 4, 1, 1)
    positions = compute_positions(weight, "crossfilter")
    ordered = weight.flatten()[torch.argsort(positions)]
    assert torch.all(ordered[1:] >= ordered[:-1])


def test_deterministic():
    weight = torch.randn(8, 8, 3, 3)
    assert torch.equal(compute_positions(weight, "crossfilter"), compute_positions(weight, "crossfilter"))


def test_largest_cifar_layer_is_fast():
    started = time.perf_counter()
    compute_positions(torch.randn(64, 64, 3, 3), "crossfilter")
    assert time.perf_counter() - started < 5.0


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown permutation"):
        compute_positions(torch.randn(2, 2, 3, 3), "zigzag")


# ------------------------------------------------------------------------------------------ assign_positions
def _total_error(targets, predicted, positions, weights=None):
    per_kernel = (targets - predicted[positions]).pow(2).sum(dim=1)
    return float(per_kernel.sum() if weights is None else (weights * per_kernel).sum())


def test_assignment_is_a_bijection_and_never_worse():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        count = 50 + 17 * trial
        targets, predicted = torch.randn(count, 9, generator=g), torch.randn(count, 9, generator=g)
        weights = torch.rand(count, generator=g) + 0.1
        positions = torch.randperm(count, generator=g)
        new = assign_positions(targets, predicted, positions, weights=weights, candidates=4)
        assert new.dtype == torch.int64 and sorted(new.tolist()) == list(range(count))
        before = _total_error(targets, predicted, positions, weights)
        assert _total_error(targets, predicted, new, weights) < before


def test_assignment_with_all_candidates_is_the_optimal_matching():
    g = torch.Generator().manual_seed(1)
    count = 6
    targets, predicted = torch.randn(count, 4, generator=g), torch.randn(count, 4, generator=g)
    weights = torch.rand(count, generator=g) + 0.1
    best = min(
        _total_error(targets, predicted, torch.tensor(p), weights) for p in itertools.permutations(range(count))
    )
    new = assign_positions(targets, predicted, torch.arange(count), weights=weights, candidates=count)
    assert _total_error(targets, predicted, new, weights) == pytest.approx(best, rel=1e-12)


def test_assignment_recovers_where_each_kernel_is_predicted():
    g = torch.Generator().manual_seed(2)
    count = 300
    targets = torch.randn(count, 9, generator=g)
    true_positions = torch.randperm(count, generator=g)
    predicted = torch.empty_like(targets)
    predicted[true_positions] = targets + 0.01 * torch.randn(count, 9, generator=g)
    new = assign_positions(targets, predicted, torch.randperm(count, generator=g), candidates=8)
    assert torch.equal(new, true_positions)


def test_assignment_keeps_a_perfect_fit_in_place():
    targets = torch.randn(40, 9)
    positions = torch.randperm(40)
    predicted = torch.empty_like(targets)
    predicted[positions] = targets
    assert torch.equal(assign_positions(targets, predicted, positions), positions)


def test_large_layers_are_matched_within_chain_segments(monkeypatch):
    monkeypatch.setattr(permutations, "_ASSIGN_SEGMENT", 8)
    g = torch.Generator().manual_seed(3)
    count = 20
    targets, predicted = torch.randn(count, 9, generator=g), torch.randn(count, 9, generator=g)
    positions = torch.randperm(count, generator=g)
    new = assign_positions(targets, predicted, positions)
    assert sorted(new.tolist()) == list(range(count))
    assert _total_error(targets, predicted, new) < _total_error(targets, predicted, positions)
    for start in (0, 8, 16):  # a kernel stays in its stretch of the chain: positions start..start+7
        inside = (positions >= start) & (positions < start + 8)
        assert bool(((new[inside] >= start) & (new[inside] < start + 8)).all())


def test_scalar_kernels_are_matched_in_sorted_order_quickly():
    # 1x1 kernels: one-dimensional costs full of near-ties, on which a general matcher stalls (the demo's CNN).
    g = torch.Generator().manual_seed(4)
    count = 4096
    targets = torch.round(torch.randn(count, 1, generator=g) * 20) / 20
    predicted = torch.round(torch.randn(count, 1, generator=g) * 20) / 20
    positions = torch.randperm(count, generator=g)
    started = time.perf_counter()
    new = assign_positions(targets, predicted, positions)
    assert time.perf_counter() - started < 10.0
    optimum = (targets[:, 0].sort().values - predicted[:, 0].sort().values).pow(2).sum()
    assert _total_error(targets, predicted, new) == pytest.approx(float(optimum), rel=1e-9)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_smallest_entries_match_topk_in_order(k):
    matrix = torch.randn(40, 40, generator=torch.Generator().manual_seed(k))
    chosen = permutations._smallest(matrix, k)
    assert torch.equal(chosen, torch.topk(matrix, k, dim=1, largest=False).indices)
