"""Reconstruction: what the predictor regresses (kernel groups, per-filter importance), how it is measured, and the
flat loop that fits it (``train_reconstruction``), with Adam and a warmup + cosine schedule; no data needed.

A kernel group holds per kernel its target, sampling weight and importance; embeddings are looked up for each
sampled batch (``embeddings.KernelEmbeddings``), so memory grows with the kernels' values, not with the embedding
width. Regeneration over whole layers (the error, re-assignment) runs in chunks (``Nern.predict_at``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .embeddings import KernelEmbeddings
from .layers import LayerEntry, following_batchnorms
from .models.registry import get_arch
from .nern import Nern, normalised_kernels
from .optim import lr_at, use_bf16
from .permutations import assign_positions
from .progress import StepCallback
from .resume import Checkpointer, LoopState

IMPORTANCE = ("bn", "uniform")


@dataclass
class KernelGroup:
    """All represented kernels of one size, flattened across layers: what a reconstruction step samples from."""

    kernel_size: int
    embeddings: KernelEmbeddings  # embeddings[index] -> float32 (B, emb), computed on demand
    targets: Tensor  # float32 (N, k*k), per-filter normalised
    sampling_weights: Tensor  # float32 (N,), kernel L2 norms
    importance: Tensor  # float32 (N,), weight of each kernel's squared error
    layers: list[LayerEntry]  # the layers whose kernels these are, in order


def filter_importance(nern: Nern, method: str = "bn") -> dict[str, Tensor]:
    """Weight of each filter's squared error in the predictor's (normalised) output units, mean 1 over kernels.

    With "bn", a filter followed by BatchNorm weighs (scale_f * gamma_f / sqrt(var_f + eps))^2: the error of the
    normalised pre-activation it causes per unit input. Filters without a BatchNorm use the median gain of the
    others. "uniform" weighs every original weight alike: scale_f^2.
    """
    scales = {e.name: nern.scales.get(e.name, torch.ones(e.c_out)).to(torch.float32) for e in nern.layers}
    gains: dict[str, Tensor | None] = {e.name: None for e in nern.layers}
    if method == "bn":
        pairs = following_batchnorms(get_arch(nern.arch))
        for entry in nern.layers:
            bn = pairs.get(entry.name)
            keys = [f"{bn}.weight", f"{bn}.running_var"] if bn else []
            if bn and all(k in nern.raw for k in keys):
                gamma, var = nern.raw[keys[0]].to(torch.float32), nern.raw[keys[1]].to(torch.float32)
                gains[entry.name] = gamma.abs() / torch.sqrt(var + 1e-5)
        known = [g for g in gains.values() if g is not None]
        fallback = float(torch.cat(known).median()) if known else 1.0
    else:
        fallback = 1.0
    weights = {}
    for entry in nern.layers:
        gain = gains[entry.name] if gains[entry.name] is not None else torch.full((entry.c_out,), fallback)
        weights[entry.name] = (scales[entry.name] * gain).pow(2)
    total = sum(float(w.sum()) * e.c_in for e, w in zip(nern.layers, weights.values()))
    mean = total / sum(e.num_kernels for e in nern.layers)
    return {name: w / mean if mean > 0 else torch.ones_like(w) for name, w in weights.items()}


def kernel_groups(
    nern: Nern, weights: dict[str, Tensor], device: torch.device, importance: str = "bn"
) -> list[KernelGroup]:
    per_filter = filter_importance(nern, importance)
    groups = []
    for size in nern.predictor.config.kernel_sizes:
        entries = [e for e in nern.layers if e.kernel_size == size]
        if not entries:
            continue
        targets = torch.cat([normalised_kernels(weights[e.name], nern.scales.get(e.name)) for e in entries])
        kernel_weights = torch.cat([per_filter[e.name].repeat_interleave(e.c_in) for e in entries])
        groups.append(
            KernelGroup(
                size,
                nern.kernel_embeddings(entries).to(device),
                targets.to(device),
                targets.norm(dim=1).to(device) + 1e-12,
                kernel_weights.to(device),
                entries,
            )
        )
    return groups


def reconstruction_error(
    nern: Nern, weights: dict[str, Tensor], *, on_layer: Callable[[int, int], None] | None = None
) -> dict[str, float]:
    """RMSE of the regenerated kernels against ``weights``; ``on_layer(layers done, layers)`` after each layer.

    Returns:
        ``rmse``: in weight units over all represented weights; ``relative_rmse``: rmse / std of those weights;
        ``normalised_rmse``: rmse of the per-filter normalised kernels (what training minimises).
    """
    squared = 0.0
    squared_normalised = 0.0
    total = 0
    originals = []
    with torch.no_grad():
        for entry in nern.layers:
            original = weights[entry.name].to(torch.float32)
            regenerated = nern.regenerate_layer(entry).cpu()
            squared += float((regenerated - original).pow(2).sum())
            scale = nern.scales.get(entry.name, torch.ones(entry.c_out))
            safe = torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, 1, 1, 1)
            squared_normalised += float(((regenerated - original) / safe).pow(2).sum())
            total += original.numel()
            originals.append(original.flatten())
            if on_layer is not None:
                on_layer(len(originals), len(nern.layers))
    rmse = math.sqrt(squared / total)
    std = float(torch.cat(originals).std())
    return {"rmse": rmse, "relative_rmse": rmse / std, "normalised_rmse": math.sqrt(squared_normalised / total)}


@torch.no_grad()
def reassign_positions(nern: Nern, groups: list[KernelGroup]) -> int:
    """Move every layer's kernels to the positions whose predicted kernels fit them best, in ``nern.positions``
    and in the groups' embeddings (see ``permutations.assign_positions``). Returns how many kernels moved."""
    was_training = nern.predictor.training
    nern.predictor.eval()
    moved = 0
    for group in groups:
        start = 0
        for number, entry in enumerate(group.layers):
            end = start + entry.num_kernels
            if entry.kernel_size == 1:  # 1x1 layers keep their index (see training.layer positions)
                start = end
                continue
            predicted = nern.predict_at(entry, torch.arange(entry.num_kernels))
            old = nern.positions[entry.name]
            new = assign_positions(
                group.targets[start:end], predicted, old, weights=group.importance[start:end]
            )  # fmt: skip
            moved += int((new != old).sum())
            nern.positions[entry.name] = new
            group.embeddings.set_positions(number, new)
            start = end
    nern.predictor.train(was_training)
    return moved


def sampled_recon_loss(nern: Nern, groups: list[KernelGroup], sample: int, generator: torch.Generator) -> Tensor:
    total = sum(g.targets.shape[0] for g in groups)
    squared_error, elements = None, 0
    for group in groups:
        count = group.targets.shape[0]
        batch = max(1, min(count, round(sample * count / total)))
        index = torch.randint(count, (batch,), generator=generator).to(group.targets.device)
        predicted = nern.predictor(group.embeddings[index], group.kernel_size).float()
        error = (predicted - group.targets[index]).pow(2).sum(1)
        error = (group.importance[index] * error).sum()
        squared_error = error if squared_error is None else squared_error + error
        elements += batch * group.kernel_size**2
    return squared_error / elements


class ReconSchedule(Protocol):
    """The settings the reconstruction loop reads (``training.FitConfig`` has them all)."""

    iters: int
    lr: float
    warmup: float
    final_lr_ratio: float
    batch_size: int
    norm_sampling: float
    importance: str
    precision: str
    reassign_every: int
    seed: int


def _reassign_due(step: int, config: ReconSchedule) -> bool:
    """Re-assignment runs after the warm-up (an untrained predictor's outputs say nothing) and stops at 95% of the
    steps, so that the predictor ends by fitting the positions it is stored with."""
    every = config.reassign_every
    return every > 0 and step > 0 and step % every == 0 and config.warmup * config.iters <= step <= 0.95 * config.iters


def train_reconstruction(
    nern: Nern,
    weights: dict[str, Tensor],
    config: ReconSchedule,
    *,
    device: torch.device,
    on_step: StepCallback | None = None,
    log_every: int = 50,
    checkpointer: Checkpointer | None = None,
    before_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The reconstruction loop: sample kernels, regress, step; every ``config.reassign_every`` steps, move kernels
    to the positions that fit them best. Returns the final training loss.
    ``before_step(step)``, when given, runs first in every step (e.g. to update pruning masks)."""
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    optimizer = torch.optim.Adam(nern.predictor.parameters(), lr=config.lr)
    predictor = nern.predictor.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config.precision, device))
    resumed = checkpointer.restore(predictor, optimizer, generator) if checkpointer is not None else None
    if resumed is not None and resumed.positions is not None:
        nern.positions.update(resumed.positions)
    groups = kernel_groups(nern, weights, device, config.importance)
    total_kernels = sum(g.targets.shape[0] for g in groups)
    # Only crossfilter positions are stored as a free permutation; infilter's keep each filter's kernels together
    # and none stores no positions, so re-assignment would be lost in the file.
    moves_positions = config.reassign_every > 0 and nern.permute == "crossfilter"
    for step in range(resumed.step if resumed is not None else 0, config.iters):
        if before_step is not None:
            before_step(step)
        if moves_positions and _reassign_due(step, config):
            reassign_positions(nern, groups)
        lr = lr_at(step, total=config.iters, peak=config.lr, warmup=config.warmup, final_ratio=config.final_lr_ratio)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        by_norm = float(torch.rand((), generator=generator)) < config.norm_sampling
        squared_error = torch.zeros((), device=device)
        elements = 0
        for group in groups:
            count = group.targets.shape[0]
            batch = max(1, min(count, round(config.batch_size * count / total_kernels)))
            if by_norm:
                index = torch.multinomial(group.sampling_weights.cpu(), batch, replacement=True, generator=generator)
            else:
                index = torch.randint(count, (batch,), generator=generator)
            index = index.to(device)
            with autocast:
                predicted = predictor(group.embeddings[index], group.kernel_size)
            error = (predicted.float() - group.targets[index]).pow(2).sum(dim=1)
            squared_error = squared_error + (group.importance[index] * error).sum()
            elements += predicted.numel()
        loss = squared_error / elements
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None and (step % log_every == 0 or step == config.iters - 1):
            loss_value = float(loss.detach())
            on_step(step + 1, config.iters, {"loss": loss_value, "rmse": math.sqrt(loss_value), "lr": lr})
        if checkpointer is not None:  # last in the step: a snapshot sees the state an uninterrupted run goes on from
            done = step + 1
            checkpointer.step_done(
                done, config.iters,
                lambda: LoopState.capture(
                    done, predictor, optimizer, generator, positions=nern.positions if moves_positions else None
                ),
            )  # fmt: skip
    predictor.eval()
    return {"final_loss": float(loss.detach())}
