"""Pruning the predictor: which weights (unstructured) or hidden units (structured) survive.

Unstructured pruning keeps boolean masks shaped like each Linear weight; ``compress`` zeroes the pruned weights and
keeps them zero while fine-tuning (``quantization.FixedMask``), and the artifact stores only the kept ones.
Structured pruning builds a narrower dense predictor. Both rank by magnitude; ties break by position, so the same
predictor always gives the same masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .predictor import Predictor, linear_layers


def zero_masks(predictor: nn.Module) -> dict[str, Tensor]:
    """The kept weights of an already pruned predictor: its non-zero weights."""
    return {name: module.weight.detach().cpu() != 0 for name, module in linear_layers(predictor).items()}


def achieved_sparsity(masks: dict[str, Tensor]) -> float:
    """The share of weights the masks remove (6 decimals)."""
    kept = sum(int(mask.sum()) for mask in masks.values())
    return round(1.0 - kept / sum(mask.numel() for mask in masks.values()), 6)


def _top(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask of the ``keep`` largest scores (ties broken by position, so the result is reproducible)."""
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order] = True
    return mask


def magnitude_masks(predictor: nn.Module, sparsity: float, scope: str) -> dict[str, Tensor]:
    """Which Linear weights survive magnitude pruning: bool masks shaped like the weights."""
    weights = {name: module.weight.detach().cpu().abs() for name, module in linear_layers(predictor).items()}
    if scope == "layer":
        return {
            name: _top(w.reshape(-1), round((1.0 - sparsity) * w.numel())).view_as(w) for name, w in weights.items()
        }
    # Global ranking compares each weight with its own layer's RMS: raw magnitudes would empty the output heads,
    # whose weights are ~5x smaller (they produce kernel values), and leave the predictor unable to recover.
    flat = torch.cat([(w / w.pow(2).mean().sqrt().clamp_min(1e-12)).reshape(-1) for w in weights.values()])
    kept = _top(flat, round((1.0 - sparsity) * flat.numel())).split([w.numel() for w in weights.values()])
    return {name: mask.view_as(w) for (name, w), mask in zip(weights.items(), kept)}


def gradual_masks(
    predictor: nn.Module, sparsity_at: Callable[[int], float], scope: str, masks: dict[str, Tensor]
) -> Callable[[int], None]:
    """Set ``masks`` (in place) to the first step's sparsity, and return the hook that raises it during
    reconstruction. Weights pruned at one update stay pruned: they are zero, so they rank last at the next.

    ``sparsity_at(step)`` is the share to prune at a reconstruction step (``PruneConfig.sparsity_at``); ``scope``
    ranks weights globally or within each layer, as ``magnitude_masks``.
    """
    linears = linear_layers(predictor)
    existing = {name: module.weight.detach().cpu() != 0 for name, module in linears.items()}
    for name, mask in masks.items():
        mask.copy_(existing[name])
    current = -1.0

    def update(step: int) -> None:
        nonlocal current
        sparsity = sparsity_at(step)
        if sparsity == current:
            return
        current = sparsity
        for name, mask in magnitude_masks(predictor, sparsity, scope).items():
            masks[name].copy_(mask & masks[name] & existing[name])
            module = linears[name]
            if parametrize.is_parametrized(module, "weight"):  # FixedMask is its first parametrization
                module.parametrizations.weight[0].mask.copy_(masks[name])

    update(0)
    return update


def remove_hidden_units(predictor: Predictor, sparsity: float, scope: str) -> Predictor:
    """A narrower predictor without the hidden units of smallest norm.

    A unit's score is ||incoming weights and bias|| * ||outgoing weights||: ReLU lets a unit move scale between
    the two, so only their product says how much the unit can contribute.
    """
    body = [module for module in predictor.body if isinstance(module, nn.Linear)]
    heads = list(predictor.heads.values())
    scores = []
    with torch.no_grad():
        for index, layer in enumerate(body):
            incoming = torch.cat([layer.weight, layer.bias[:, None]], dim=1).norm(dim=1)
            following = [body[index + 1].weight] if index + 1 < len(body) else [head.weight for head in heads]
            scores.append(incoming * torch.cat(following).norm(dim=0))
    if scope == "layer":
        keep = [_top(s, max(1, round((1.0 - sparsity) * s.numel()))) for s in scores]
    else:
        total = sum(s.numel() for s in scores)
        keep = list(_top(torch.cat(scores), max(1, round((1.0 - sparsity) * total))).split([s.numel() for s in scores]))
        keep = [k if k.any() else _top(s, 1) for k, s in zip(keep, scores)]  # every layer keeps one unit
    config = dataclasses.replace(predictor.config, widths=tuple(int(k.sum()) for k in keep))
    smaller = Predictor(config)
    new_body = [module for module in smaller.body if isinstance(module, nn.Linear)]
    with torch.no_grad():
        previous = torch.ones(config.input_dim, dtype=torch.bool)
        for old, new, rows in zip(body, new_body, keep):
            new.weight.copy_(old.weight[rows][:, previous])
            new.bias.copy_(old.bias[rows])
            previous = rows
        for name, head in smaller.heads.items():
            head.weight.copy_(predictor.heads[name].weight[:, previous])
            head.bias.copy_(predictor.heads[name].bias)
    return smaller.train(predictor.training)
