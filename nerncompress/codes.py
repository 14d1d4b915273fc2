"""Coded tensors: values stored as integers on a uniform grid, ``value = step * ints``, entropy-coded in the file.

A coded tensor stands for a weight on its own (no predictor: the plain codec), or for the *residual* of a layer
the predictor represents (``weight = predictor output + step * ints``). Its bytes are what the entropy coder makes
of the integers, so a coarser ``step`` or integers nearer zero cost fewer bits; ``quantize`` can trade a little
distortion for rate (rate-distortion optimised rounding). The integers of a k x k conv are stored plane by plane
(``plane_order``: every kernel's first value, then every second value, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import UsageError

# Integers of a coded tensor are stored as int32: steps finer than 2**-31 of a tensor's range are not coding.
MAX_INT = 2**31 - 1


@dataclass
class QuantizedTensor:
    """A tensor stored as ``step * ints``.

    Attributes:
        step: the grid's spacing, > 0 (a float32 value).
        ints: int32 integers, the tensor's shape.
    """

    step: float
    ints: Tensor

    def __post_init__(self) -> None:
        self.step = float(np.float32(self.step))
        if not (math.isfinite(self.step) and self.step > 0):
            raise UsageError(f"a quantization step must be finite and > 0, got {self.step}")
        self.ints = self.ints.to(torch.int32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ints.shape)

    def dequantize(self) -> Tensor:
        """The values: float32, ``self.shape``."""
        return self.ints.to(torch.float32) * self.step


def nearest(values: Tensor, step: float) -> QuantizedTensor:
    """Round every value to the nearest multiple of ``step``.

    Raises:
        UsageError: a step so fine that an integer would not fit in int32.
    """
    step = float(np.float32(step))
    scaled = values.detach().to(torch.float64) / step
    if scaled.numel() and float(scaled.abs().max()) > MAX_INT:
        raise UsageError(f"step {step:.3g} is too fine for values up to {float(values.abs().max()):.3g}")
    return QuantizedTensor(step, torch.round(scaled).to(torch.int32))


def rate_distortion_round(values: Tensor, step: float, *, rate_weight: float, passes: int = 2) -> QuantizedTensor:
    """Round each value to the grid point that minimises distortion + rate, not distortion alone.

    The cost of integer ``q`` for value ``v`` is ``(v / step - q)**2 + rate_weight * bits(q)``, where ``bits(q)`` is
    ``-log2`` of ``q``'s frequency in the tensor (the adaptive coder's cost, to a good approximation). Each value
    chooses between its nearest grid point and the next one towards zero, which is what saves bits on a peaked
    distribution; the frequencies are re-estimated after each pass.

    Args:
        values: the tensor.
        step: the grid spacing.
        rate_weight: lambda, in squared steps per bit: 0 is plain rounding; about 0.1-0.3 trades a few percent of
            distortion for several percent of rate.
        passes: rounds of frequency re-estimation.

    Returns:
        The quantized tensor.
    """
    rounded = nearest(values, step)
    if rate_weight <= 0 or values.numel() == 0:
        return rounded
    scaled = values.detach().to(torch.float64).reshape(-1) / rounded.step
    q = rounded.ints.reshape(-1).to(torch.int64)
    toward_zero = q - torch.sign(q)
    for _ in range(passes):
        low = int(q.min())
        counts = torch.bincount(q - low).to(torch.float64)
        bits = -torch.log2((counts + 0.5) / (counts.sum() + 0.5 * counts.numel()))

        def cost(candidate: Tensor) -> Tensor:
            index = (candidate - low).clamp(0, counts.numel() - 1)
            return (scaled - candidate).pow(2) + rate_weight * bits[index]

        q = torch.where(cost(toward_zero) < cost(q), toward_zero, q)
        toward_zero = q - torch.sign(q)
    return QuantizedTensor(rounded.step, q.view(values.shape).to(torch.int32))


def plane_order(ints: np.ndarray) -> np.ndarray:
    """The integers of a conv weight reordered plane by plane (all kernels' first value, then all second values,
    ...): neighbouring values of one plane come from similar positions in their kernels. Other tensors keep their
    order. int64 (numel,)."""
    flat = ints.astype(np.int64)
    if flat.ndim == 4 and flat.shape[2] * flat.shape[3] > 1:
        return flat.reshape(flat.shape[0] * flat.shape[1], -1).T.reshape(-1)
    return flat.reshape(-1)


def from_plane_order(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``plane_order`` for a tensor of ``shape``."""
    if len(shape) == 4 and shape[2] * shape[3] > 1:
        kernels = shape[0] * shape[1]
        return values.reshape(shape[2] * shape[3], kernels).T.reshape(shape)
    return values.reshape(shape)
