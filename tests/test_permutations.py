import itertools
import time

import numpy as np
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


# ------------------------------------------------------------------------------------ layers above BLOCK kernels
def _clustered(clusters=48, per_cluster=180, dim=9, seed=0):
    """clusters * per_cluster kernels around well separated centres, shuffled: (kernels, cluster of each)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=g), dim=1)
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    kernels = centres[labels] + 0.02 * torch.randn(clusters * per_cluster, dim, generator=g)
    order = torch.randperm(len(labels), generator=g)
    return kernels[order], labels[order]


@pytest.mark.parametrize("method", ["crossfilter", "infilter"])
def test_layer_above_block_is_a_bijection(method):
    weight = torch.randn(128, 48, 3, 3)  # 6,144 kernels: more than one block
    assert weight.shape[0] * weight.shape[1] > permutations.BLOCK
    positions = compute_positions(weight, method)
    assert sorted(positions.tolist()) == list(range(128 * 48))


def test_blocked_chain_keeps_clusters_together():
    kernels, labels = _clustered()  # 8,640 kernels in 48 clusters: the chain is cut into blocks
    assert len(labels) > permutations.BLOCK
    positions = compute_positions(kernels.view(96, 90, 3, 3), "crossfilter")
    along = labels[torch.argsort(positions)]
    switches = int((along[1:] != along[:-1]).sum())
    # A chain that keeps every cluster in one stretch switches 47 times; a random order about 8,600 times.
    assert switches < 2 * 48


def test_blocked_chain_is_nearly_as_smooth_as_the_exact_one(monkeypatch):
    weight = _smooth_then_shuffled(c_out=64, c_in=40)
    exact = neighbour_similarity(weight, compute_positions(weight, "crossfilter"))
    monkeypatch.setattr(permutations, "BLOCK", 256)  # ten blocks
    blocked = compute_positions(weight, "crossfilter")
    assert sorted(blocked.tolist()) == list(range(64 * 40))
    assert neighbour_similarity(weight, blocked) > exact - 0.05


def test_bisection_parts_are_bounded_and_cover_every_row():
    unit = permutations._normalise_rows(torch.randn(10_000, 9).numpy())
    parts = permutations._bisect(unit, 1000)
    assert all(500 <= len(part) <= 1000 for part in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10_000))


def test_wide_rows_use_a_truncated_svd():
    g = torch.Generator().manual_seed(5)
    centred = (torch.randn(600, 300, generator=g) * torch.linspace(0.1, 1, 300)).double().numpy()
    centred[:, 7] *= 50  # the principal direction is axis 7
    centred -= centred.mean(axis=0)
    direction = permutations._principal_direction(centred)
    assert abs(direction[7]) > 0.99


def test_infilter_chains_long_filters_block_by_block(monkeypatch):
    monkeypatch.setattr(permutations, "BLOCK", 16)
    weight = torch.randn(5, 40, 3, 3)  # 40 channels per filter: above the block
    positions = compute_positions(weight, "infilter")
    assert sorted(positions.tolist()) == list(range(200))
    filters = torch.div(positions.view(5, 40), 40, rounding_mode="floor")
    assert all(len(set(row.tolist())) == 1 for row in filters)


def test_infilter_batches_of_filters_give_the_unbatched_chains(monkeypatch):
    weight = torch.randn(12, 10, 3, 3)
    whole = compute_positions(weight, "infilter")
    monkeypatch.setattr(permutations, "_BATCH_FLOATS", 250)  # two filters per batch
    assert torch.equal(compute_positions(weight, "infilter"), whole)


@pytest.mark.parametrize("method", PERMUTATIONS)
def test_progress_is_reported_up_to_the_total(method):
    calls = []
    weight = torch.randn(96, 64, 3, 3)
    compute_positions(weight, method, on_progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (96 * 64, 96 * 64)
    assert all(total == 96 * 64 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    if method == "crossfilter":
        assert len(calls) > 1  # one report per block


def test_a_raising_progress_callback_stops_between_blocks():
    calls = []

    def stop(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_positions(torch.randn(128, 64, 3, 3), "crossfilter", on_progress=stop)
    assert len(calls) == 1 and calls[0] < 128 * 64


def test_large_imagenet_layer_is_fast():
    started = time.perf_counter()
    positions = compute_positions(torch.randn(256, 256, 3, 3), "crossfilter")  # 65,536 kernels
    assert time.perf_counter() - started < 30.0  # the exact chain took over half a minute
    assert positions.unique().numel() == 65_536


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
