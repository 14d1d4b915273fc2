"""Packing unsigned integers into ``bits`` bits each (permutation positions, sub-8-bit quantized weights)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def bits_for(count: int) -> int:
    """Bits needed to store any index in 0..count-1 (at least 1)."""
    return max(1, int(count - 1).bit_length())


def pack_uints(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers < 2**bits into a uint8 tensor of ceil(N * bits / 8) bytes (big-endian bits)."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    array = values.detach().cpu().to(torch.int64).numpy().astype(np.uint64).reshape(-1)
    if array.size and int(array.max()) >= (1 << bits):
        raise ValueError(f"value {int(array.max())} does not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bit_matrix = ((array[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1)))


def unpack_uints(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_uints``: int64 (count,). Raises ValueError when ``packed`` is too short."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    needed = (count * bits + 7) // 8
    data = packed.detach().cpu().numpy().reshape(-1)
    if data.dtype != np.uint8 or data.size != needed:
        raise ValueError(f"expected {needed} packed bytes for {count} values of {bits} bits, got {data.size}")
    bit_matrix = np.unpackbits(data)[: count * bits].reshape(count, bits).astype(np.int64)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return torch.from_numpy(bit_matrix @ weights)
