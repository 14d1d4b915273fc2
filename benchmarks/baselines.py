"""What a user would do instead of nerncompress: weight-only compression of the original checkpoint.

Every baseline writes a real file (so its size is bytes on disk, header included) and returns the dequantized
float state_dict that the benchmark evaluates with the same code path as our expanded models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from nerncompress.bitpack import pack_uints


def _is_conv_or_linear_weight(key: str, value: Tensor) -> bool:
    return key.endswith("weight") and value.dim() in (2, 4) and value.is_floating_point()


def fp16(state_dict: dict[str, Tensor], path: Path) -> tuple[dict[str, Tensor], int]:
    """Every float tensor in float16."""
    stored = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_file(stored, str(path))
    return {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}, path.stat().st_size


def quantize_weights(
    state_dict: dict[str, Tensor], path: Path, *, bits: int, group_size: int | None = None
) -> tuple[dict[str, Tensor], int]:
    """Weight-only symmetric quantization of conv and linear weights: per output channel, or per group of
    ``group_size`` consecutive input weights of each output channel. Scales in fp16, integers packed at ``bits``
    bits; every other tensor stays fp32."""
    stored: dict[str, Tensor] = {}
    restored: dict[str, Tensor] = {}
    qmax = 2 ** (bits - 1) - 1
    for key, value in state_dict.items():
        if not _is_conv_or_linear_weight(key, value):
            stored[key] = value
            restored[key] = value
            continue
        rows = value.reshape(value.shape[0], -1).float()
        group = group_size or rows.shape[1]
        pad = (-rows.shape[1]) % group
        padded = torch.nn.functional.pad(rows, (0, pad)).reshape(rows.shape[0], -1, group)
        scale = (padded.abs().amax(dim=2, keepdim=True) / qmax).clamp_min(1e-12).half().float()
        q = torch.clamp(torch.round(padded / scale), -qmax - 1, qmax)
        dequant = (q * scale).reshape(rows.shape[0], -1)[:, : rows.shape[1]].reshape(value.shape)
        stored[f"{key}.q"] = pack_uints((q.flatten() + qmax + 1).to(torch.int64), bits)
        stored[f"{key}.scale"] = scale.half().flatten()
        restored[key] = dequant
    save_file(stored, str(path))
    return restored, path.stat().st_size


def magnitude_prune(state_dict: dict[str, Tensor], path: Path, *, sparsity: float) -> tuple[dict[str, Tensor], int]:
    """Global magnitude pruning of the conv weights, stored sparse: a packed bitmask plus the fp32 non-zeros."""
    conv_keys = [k for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 4]
    magnitudes = torch.cat([state_dict[k].abs().flatten() for k in conv_keys])
    keep = max(1, int(round(magnitudes.numel() * (1 - sparsity))))
    threshold = torch.topk(magnitudes, keep).values.min()
    stored: dict[str, Tensor] = {}
    restored: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key not in conv_keys:
            stored[key] = value
            restored[key] = value
            continue
        mask = value.abs() >= threshold
        stored[f"{key}.mask"] = torch.from_numpy(__import__("numpy").packbits(mask.flatten().numpy()))
        stored[f"{key}.values"] = value[mask].float()
        restored[key] = value * mask
    save_file(stored, str(path))
    return restored, path.stat().st_size


def prune_to_bytes(state_dict: dict[str, Tensor], path: Path, *, target_bytes: int) -> tuple[dict[str, Tensor], int, float]:
    """Magnitude pruning at the sparsity whose sparse file is closest to (not above) ``target_bytes``."""
    low, high = 0.0, 0.999
    best = None
    for _ in range(14):
        middle = (low + high) / 2
        restored, size = magnitude_prune(state_dict, path, sparsity=middle)
        if size > target_bytes:
            low = middle
        else:
            high = middle
            best = (restored, size, middle)
    if best is None:
        restored, size = magnitude_prune(state_dict, path, sparsity=high)
        best = (restored, size, high)
    restored, size, sparsity = best
    magnitude_prune(state_dict, path, sparsity=sparsity)  # leave the chosen file on disk
    return restored, size, sparsity
