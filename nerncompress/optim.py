"""What every training loop shares: the learning-rate schedule and the precision."""

from __future__ import annotations

import math
import torch

PRECISIONS = ("auto", "bf16", "fp32")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast on this device."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def lr_at(step: int, *, total: int, peak: float, warmup: float, final_ratio: float) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: linear warmup, then cosine decay to peak * final_ratio."""
    warmup_steps = int(round(warmup * total))
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps - 1)  # the last step reaches the floor
    floor = peak * final_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))

