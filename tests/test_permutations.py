import time

import pytest
import torch

from nerncompress.permutations import PERMUTATIONS, compute_positions, greedy_chain, neighbour_similarity


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
