import math

import pytest
import torch

from nerncompress.embeddings import (
    EmbeddingConfig,
    KernelEmbeddings,
    embed_positions,
    kernel_coordinates,
    positional_embedding,
)


def test_coordinates_are_normalised_chain_positions():
    positions = torch.tensor([0, 1, 2, 3, 4, 5])  # 2 filters x 3 channels
    coords = kernel_coordinates(1, 4, positions, c_out=2, c_in=3)
    assert coords.shape == (6, 3)
    assert torch.allclose(coords[:, 0], torch.full((6,), 0.25))
    assert torch.allclose(coords[:, 1], torch.tensor([0, 0, 0, 0.5, 0.5, 0.5]))
    assert torch.allclose(coords[:, 2], torch.tensor([0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3]))


def test_embedding_values_match_the_formula():
    config = EmbeddingConfig(levels=3, base=1.25)
    coords = torch.tensor([[0.5, 0.25, 0.125]])
    embedded = positional_embedding(coords, config)
    assert embedded.shape == (1, config.dim) == (1, 18)
    for component, p in enumerate([0.5, 0.25, 0.125]):
        for k in range(3):
            angle = math.pi * p * 1.25**k
            assert embedded[0, component * 6 + k].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert embedded[0, component * 6 + 3 + k].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_zero_coordinate_embeds_to_sin0_cos1():
    embedded = positional_embedding(torch.zeros(1, 3), EmbeddingConfig(levels=4, base=0.76))
    assert torch.allclose(embedded.view(3, 8)[:, :4], torch.zeros(3, 4))
    assert torch.allclose(embedded.view(3, 8)[:, 4:], torch.ones(3, 4))


@pytest.mark.parametrize("levels,base", [(0, 1.25), (5, 0.0), (5, -1.0)])
def test_invalid_config_is_rejected(levels, base):
    with pytest.raises(ValueError):
        EmbeddingConfig(levels=levels, base=base)


@pytest.mark.parametrize("c_out, c_in", [(16, 3), (64, 64), (96, 40)])
def test_table_lookups_equal_the_direct_embedding(c_out, c_in):
    config = EmbeddingConfig()
    positions = torch.randperm(c_out * c_in, generator=torch.Generator().manual_seed(c_in))
    direct = positional_embedding(kernel_coordinates(3, 7, positions, c_out=c_out, c_in=c_in), config)
    assert torch.equal(embed_positions(3, 7, positions, c_out=c_out, c_in=c_in, config=config), direct)
    other = torch.arange(8 * 5).flip(0)
    table = KernelEmbeddings([(3, c_out, c_in, positions), (6, 8, 5, other)], 7, config)
    assert len(table) == c_out * c_in + 40
    index = torch.tensor([0, c_out * c_in - 1, c_out * c_in, c_out * c_in + 39])
    second = positional_embedding(kernel_coordinates(6, 7, other, c_out=8, c_in=5), config)
    assert torch.equal(table[index], torch.cat([direct[[0, -1]], second[[0, -1]]]))
    table.set_positions(1, torch.arange(40))
    moved = positional_embedding(kernel_coordinates(6, 7, torch.arange(40), c_out=8, c_in=5), config)
    assert torch.equal(table[torch.arange(c_out * c_in, len(table))], moved)
