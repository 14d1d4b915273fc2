"""What is coded and at which step: the network's tensors, their sensitivities, their codes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..codes import QuantizedTensor, nearest, rate_distortion_round
from ..data import ImageData, draw_batch, preset_stats
from ..layers import following_batchnorms
from .config import FINE_BITS


def simplify_batchnorms(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every BatchNorm that follows a conv as a per-channel scale and bias: weight = gamma / sqrt(var + eps),
    bias = beta - mean * weight, running mean 0, running variance 1 - eps. The same function in eval mode."""
    modules = dict(model.named_modules())
    simplified = dict(state_dict)
    for bn_name in following_batchnorms(model).values():
        keys = [f"{bn_name}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
        if not all(key in state_dict for key in keys):
            continue
        gamma, beta, mean, var = (state_dict[key].double() for key in keys)
        scale = gamma / torch.sqrt(var + modules[bn_name].eps)
        dtype = state_dict[keys[0]].dtype
        simplified[keys[0]] = scale.to(dtype)
        simplified[keys[1]] = (beta - mean * scale).to(dtype)
        simplified[keys[2]] = torch.zeros_like(state_dict[keys[2]])
        simplified[keys[3]] = torch.full_like(state_dict[keys[3]], 1.0 - modules[bn_name].eps)
    return simplified


def coded_keys(state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """(weight tensors coded at the global coarseness, one-dimensional tensors coded finely). Constant tensors
    and integer buffers stay raw: their entropy-coded bytes are a handful anyway."""
    weights, fine = [], []
    for key, value in state_dict.items():
        if not value.is_floating_point() or value.numel() < 2 or bool((value == value.reshape(-1)[0]).all()):
            continue
        (weights if value.dim() >= 2 else fine).append(key)
    return weights, fine


def fine_step(value: Tensor) -> float:
    """The step of a one-dimensional tensor: 2**-12 of its largest magnitude."""
    return max(float(value.abs().max()), 1e-12) * 2.0**-FINE_BITS


# ---------------------------------------------------------------------------------------------------- sensitivity
def layer_sensitivity(
    model: nn.Module, weights: list[str], data: ImageData, *, preset: str, batches: int, batch_size: int, seed: int
) -> dict[str, float]:
    """Mean squared gradient per weight of each tensor (an empirical Fisher estimate): the cross-entropy of the
    network against its own answers, on training images normalised with ``preset``.

    Returns:
        key -> mean of g**2 over the tensor's values and the batches.
    """
    spec_mean, spec_std = preset_stats(preset)
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    totals = {key: 0.0 for key in weights}
    model.eval()
    for _ in range(batches):
        x = draw_batch(data, batch_size, mean=spec_mean, std=spec_std, shape=(0, 0, 0), generator=generator,
                       augment=True, mix="none")  # fmt: skip
        model.zero_grad(set_to_none=True)
        logits = model(x)
        nn.functional.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum").backward()
        for key in weights:
            grad = parameters[key].grad
            totals[key] += 0.0 if grad is None else float(grad.pow(2).mean())
    model.zero_grad(set_to_none=True)
    return {key: total / batches for key, total in totals.items()}


def batchnorm_sensitivity(model: nn.Module, state_dict: dict[str, Tensor], weights: list[str]) -> dict[str, float]:
    """A data-free sensitivity of each conv: how much a unit error in one of its weights moves the normalised
    output of the BatchNorm after it, read off that BatchNorm.

    A conv's output has variance ``var ~ fan_in * E[w^2] * E[x^2]`` (weights and inputs independent), so its
    inputs' energy is ``E[x^2] ~ var / (fan_in * E[w^2])``; the BN multiplies errors by ``gamma / sqrt(var + eps)``.
    Per weight, the sensitivity of the normalised output is ``E[x^2] * gamma^2 / (var + eps)``, averaged over the
    output channels. Tensors without a BatchNorm after them get the median of the others.

    Returns:
        key -> sensitivity, for ``layer_steps``.
    """
    modules = dict(model.named_modules())
    found: dict[str, float] = {}
    for conv_key, bn_name in following_batchnorms(model).items():
        keys = [f"{bn_name}.{name}" for name in ("weight", "running_var")]
        if conv_key not in weights or not all(key in state_dict for key in keys):
            continue
        weight = state_dict[conv_key].double()
        gamma, var = state_dict[keys[0]].double(), state_dict[keys[1]].double()
        fan_in = weight[0].numel()
        energy = weight.flatten(1).pow(2).mean(1).clamp_min(1e-12)
        inputs = var / (fan_in * energy)
        found[conv_key] = float((inputs * gamma.pow(2) / (var + modules[bn_name].eps)).mean())
    middle = float(torch.tensor(sorted(found.values())).median()) if found else 1.0
    return {key: found.get(key, middle) for key in weights}


def layer_steps(coarseness: float, weights: list[str], sensitivity: dict[str, float] | None, sizes: dict[str, int]):
    """Step of each weight tensor: ``c / sqrt(s_l / s_mean)`` (``s_mean`` weighted by tensor size), or ``c``."""
    if sensitivity is None:
        return {key: coarseness for key in weights}
    floor = 1e-12
    total = sum(sizes[key] for key in weights)
    mean = sum(max(sensitivity[key], floor) * sizes[key] for key in weights) / total
    return {key: coarseness / math.sqrt(max(sensitivity[key], floor) / mean) for key in weights}



def quantize_state(
    state: dict[str, Tensor], steps: dict[str, float], fine: list[str], rate_weight: float
) -> dict[str, QuantizedTensor]:
    """Codes of every coded tensor: weights by rate-distortion rounding at their step, 1-D tensors finely."""
    codes = {key: rate_distortion_round(state[key], step, rate_weight=rate_weight) for key, step in steps.items()}
    codes.update({key: nearest(state[key], fine_step(state[key])) for key in fine})
    return codes


def dequantized(state: dict[str, Tensor], codes: dict[str, QuantizedTensor]) -> dict[str, Tensor]:
    return {**state, **{key: code.dequantize().to(state[key].dtype) for key, code in codes.items()}}
