"""Number formats of a compressed predictor: integer quantization (plain and GPTQ), float16, and the
straight-through parametrizations that train through them.

Quantization is symmetric with one scale per output row of a Linear weight, or per group of ``group_size``
consecutive inputs of a row: q = clamp(round(w / s), -qmax, qmax), qmax = 2**(bits-1) - 1, dequantized
w' = q * s. A scale is s = fp16(max|w| / qmax), never below the smallest normal fp16 number. That choice makes
quantizing a dequantized tensor give back exactly the same integers and scales (q * s is exact in float32
because q has at most 7 significant bits and s 11), so a predictor that holds dequantized weights in memory
re-encodes bit-identically on every save.

The compression state of a predictor (``Nern.compression``) and how it is stored are described in ``artifact``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import UsageError

STATE_VERSION = 1
BITS = (2, 3, 4, 5, 6, 7, 8, "fp16")
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
SCALE_DTYPE = torch.float16
MIN_SCALE = 2.0**-14  # smallest normal float16: subnormal scales would break exact re-quantization
_FP16_MAX = 65504.0


def qmax_for(bits: int) -> int:
    """Largest integer magnitude at ``bits`` bits (symmetric range, -2**(bits-1) unused)."""
    return (1 << (bits - 1)) - 1


def _grouped(weight: Tensor, group_size: int | None) -> Tensor:
    """View (out, in) as (out, groups, group) with zero padding of the last group."""
    out_features, in_features = weight.shape
    size = in_features if group_size is None else min(group_size, in_features)
    groups = -(-in_features // size)
    padded = nn.functional.pad(weight, (0, groups * size - in_features))
    return padded.view(out_features, groups, size)


def num_groups(in_features: int, group_size: int | None) -> int:
    """Scales per row: 1 without groups, else ceil(in_features / group_size)."""
    return 1 if group_size is None else -(-in_features // min(group_size, in_features))


def quantize_weight(weight: Tensor, bits: int, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric integer quantization of a 2-D weight.

    Args:
        weight: float (out, in).
        bits: 2..8.
        group_size: inputs sharing one scale; None = one scale per row.

    Returns:
        (q, scales): int64 (out, in) in [-qmax, qmax], and float16 (out, groups).

    Raises:
        UsageError: a weight so large that its scale does not fit in float16.
    """
    qmax = qmax_for(bits)
    grouped = _grouped(weight.detach().to(torch.float32), group_size)
    peak = grouped.abs().amax(dim=2)
    if peak.numel() and float(peak.max()) / qmax > _FP16_MAX:
        raise UsageError(f"predictor weight magnitude {float(peak.max()):.3g} is too large for float16 scales")
    scales = (peak / qmax).to(SCALE_DTYPE).clamp_min(MIN_SCALE)
    q = torch.round(grouped / scales.to(torch.float32).unsqueeze(2)).clamp(-qmax, qmax)
    return q.flatten(1)[:, : weight.shape[1]].to(torch.int64), scales


def dequantize_weight(q: Tensor, scales: Tensor, group_size: int | None = None) -> Tensor:
    """Inverse of ``quantize_weight``: float32 (out, in) = q * scale of its group."""
    in_features = q.shape[1]
    size = in_features if group_size is None else min(group_size, in_features)
    per_weight = scales.to(torch.float32).repeat_interleave(size, dim=1)[:, :in_features]
    return q.to(torch.float32) * per_weight


def round_weight(weight: Tensor, bits: int, group_size: int | None = None) -> Tensor:
    """``dequantize_weight(quantize_weight(weight))``: the float32 values the artifact will hold."""
    q, scales = quantize_weight(weight, bits, group_size)
    return dequantize_weight(q, scales, group_size).to(weight.device)


def gptq_weight(
    weight: Tensor, gram: Tensor, bits: int, group_size: int | None = None, *, mask: Tensor | None = None,
    damp: float = 0.01,
) -> Tensor:
    """Error-compensated rounding of a Linear weight (GPTQ, Frantar et al., ICLR 2023).

    Columns are rounded one at a time, and each rounding error is spread over the columns not yet rounded, in
    proportion to how the layer's inputs correlate (the inverse of ``gram``), so that the layer's *outputs* on
    those inputs move as little as possible. Scales follow the max-abs rule of ``quantize_weight``, taken when a
    row's (or group's) first column is reached.

    Args:
        weight: float (out, in).
        gram: float (in, in) = X^T X of the layer's inputs X (N, in).
        bits: 2..8.
        group_size: as in ``quantize_weight``.
        mask: bool (out, in) of the weights that may be non-zero (pruned ones round to 0); None = all.
        damp: added to the diagonal, as a share of its mean, to keep the inverse stable.

    Returns:
        float32 (out, in) on the quantization grid (re-quantize with ``round_weight`` to settle the scales).
    """
    work = weight.detach().to(torch.float32).clone()
    hessian = gram.detach().to(torch.float64).clone()
    out_features, in_features = work.shape
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    work[:, dead] = 0.0
    hessian += damp * torch.diagonal(hessian).mean() * torch.eye(in_features, dtype=torch.float64)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    upper = torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    qmax = qmax_for(bits)
    size = in_features if group_size is None else min(group_size, in_features)
    rounded = torch.zeros_like(work)
    scale = torch.ones(out_features)
    for column in range(in_features):
        if column % size == 0:
            block = work[:, column : column + size]
            peak = (block if mask is None else block * mask[:, column : column + size]).abs().amax(dim=1)
            scale = (peak / qmax).to(SCALE_DTYPE).clamp_min(MIN_SCALE).to(torch.float32)
        value = work[:, column]
        q = torch.round(value / scale).clamp(-qmax, qmax) * scale
        if mask is not None:
            q = q * mask[:, column]
        rounded[:, column] = q
        error = (value - q) / upper[column, column]
        work[:, column + 1 :] -= error[:, None] * upper[column, column + 1 :][None, :]
    return rounded


def round_fp16(tensor: Tensor) -> Tensor:
    """Float32 values exactly representable in float16 (the stored values of fp16 tensors)."""
    return tensor.to(torch.float16).to(tensor.dtype)


class FakeQuantize(nn.Module):
    """Parametrization that rounds a weight to its quantized values in the forward pass and lets gradients pass
    through unchanged (straight-through estimator); the scales follow the current weight."""

    def __init__(self, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits = bits
        self.group_size = group_size

    def forward(self, weight: Tensor) -> Tensor:
        rounded = round_weight(weight.detach(), self.bits, self.group_size)
        return weight + (rounded - weight).detach()


class FakeFP16(nn.Module):
    """Parametrization rounding to float16 values, with a straight-through gradient."""

    def forward(self, tensor: Tensor) -> Tensor:
        return tensor + (round_fp16(tensor.detach()) - tensor).detach()


class FixedMask(nn.Module):
    """Parametrization that keeps pruned weights at zero (their gradient is zero too)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask
