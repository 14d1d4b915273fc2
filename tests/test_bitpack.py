import pytest
import torch

from nerncompress.bitpack import bits_for, pack_uints, unpack_uints


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64, 4096, 5000])
def test_round_trip(count):
    values = torch.randperm(count)
    bits = bits_for(count)
    packed = pack_uints(values, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count * bits + 7) // 8
    assert torch.equal(unpack_uints(packed, bits, count), values)


def test_bits_for():
    assert [bits_for(n) for n in (1, 2, 3, 4, 5, 4096, 4097)] == [1, 1, 2, 2, 3, 12, 13]


def test_value_too_large_and_short_buffer():
    with pytest.raises(ValueError):
        pack_uints(torch.tensor([8]), 3)
    with pytest.raises(ValueError):
        unpack_uints(torch.zeros(1, dtype=torch.uint8), 4, 5)
