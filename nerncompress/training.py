"""Training loops: ``fit`` (reconstruction) and ``distill`` (knowledge distillation), flat and readable.

fit: regress the predictor's output onto the original kernels (normalised per filter), on random batches of
kernels, with Adam and a warmup + cosine schedule. No data needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .devices import resolve_device
from .embeddings import EmbeddingConfig
from .errors import UsageError
from .layers import plan_layers
from .models.registry import ArchSpec, build_model, resolve_arch
from .nern import Nern, filter_scales, normalised_kernels
from .permutations import PERMUTATIONS, compute_positions
from .predictor import PredictorConfig, build_predictor

StepCallback = Callable[[int, int, dict[str, float]], None]

FIT_CONFIG_VERSION = 1


@dataclass
class FitConfig:
    """Reconstruction fitting. Defaults are the recipe measured best on CIFAR ResNets on a 2-core CPU.

    Attributes:
        hidden: predictor width h (``--hidden``).
        depth: hidden-to-hidden layers of the predictor.
        levels, base: positional embedding (L levels of frequency pi * base**k).
        permute: smoothing permutation, one of crossfilter | infilter | none.
        iters: optimisation steps.
        lr: peak learning rate of Adam.
        warmup: fraction of ``iters`` spent warming the learning rate up linearly.
        final_lr_ratio: the cosine decay ends at ``lr * final_lr_ratio``.
        batch_size: kernels per step.
        norm_sampling: share of steps whose batch is drawn with probability proportional to kernel norm.
        kernel_sizes: kernel sizes with a predictor head; None picks them automatically.
        raw_layers: conv weight keys to store raw.
        min_kernels: conv layers with fewer kernels stay raw.
        seed: seeds the predictor's initialisation and the batch sampling.
    """

    hidden: int = 180
    depth: int = 3
    levels: int = 20
    base: float = 1.25
    permute: str = "crossfilter"
    iters: int = 12000
    lr: float = 2e-3
    warmup: float = 0.05
    final_lr_ratio: float = 1e-3
    batch_size: int = 4096
    norm_sampling: float = 0.2
    kernel_sizes: tuple[int, ...] | None = None
    raw_layers: tuple[str, ...] = ()
    min_kernels: int = 0
    seed: int = 0
    version: int = FIT_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.permute not in PERMUTATIONS:
            raise UsageError(f"unknown permutation {self.permute!r}: choose one of {', '.join(PERMUTATIONS)}")
        if self.hidden < 1:
            raise UsageError(f"--hidden must be >= 1, got {self.hidden}")
        if self.iters < 1:
            raise UsageError(f"--iters must be >= 1, got {self.iters}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.norm_sampling <= 1.0:
            raise UsageError(f"norm_sampling must be in [0, 1], got {self.norm_sampling}")
        if not 0.0 <= self.warmup < 1.0:
            raise UsageError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.levels < 1 or not self.base > 0:
            raise UsageError(f"embedding needs levels >= 1 and base > 0, got {self.levels}, {self.base}")
        if self.kernel_sizes is not None:
            self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        self.raw_layers = tuple(self.raw_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, *, total: int, peak: float, warmup: float, final_ratio: float) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: linear warmup, then cosine decay to peak * final_ratio."""
    warmup_steps = int(round(warmup * total))
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    floor = peak * final_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class _KernelGroup:
    """All represented kernels of one size, flattened across layers: what a reconstruction step samples from."""

    kernel_size: int
    embeddings: Tensor  # float32 (N, emb)
    targets: Tensor  # float32 (N, k*k), per-filter normalised
    sampling_weights: Tensor  # float32 (N,), kernel L2 norms


def _kernel_groups(nern: Nern, weights: dict[str, Tensor], device: torch.device) -> list[_KernelGroup]:
    groups = []
    for size in nern.predictor.config.kernel_sizes:
        entries = [e for e in nern.layers if e.kernel_size == size]
        if not entries:
            continue
        embeddings = torch.cat([nern.layer_embeddings(e) for e in entries])
        targets = torch.cat([normalised_kernels(weights[e.name], nern.scales[e.name]) for e in entries])
        groups.append(
            _KernelGroup(size, embeddings.to(device), targets.to(device), targets.norm(dim=1).to(device) + 1e-12)
        )
    return groups


def reconstruction_error(nern: Nern, weights: dict[str, Tensor]) -> dict[str, float]:
    """RMSE of the regenerated kernels against ``weights``.

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
            scale = nern.scales[entry.name]
            safe = torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, 1, 1, 1)
            squared_normalised += float(((regenerated - original) / safe).pow(2).sum())
            total += original.numel()
            originals.append(original.flatten())
    rmse = math.sqrt(squared / total)
    std = float(torch.cat(originals).std())
    return {"rmse": rmse, "relative_rmse": rmse / std, "normalised_rmse": math.sqrt(squared_normalised / total)}


def init_nern(
    state_dict: dict[str, Tensor], config: FitConfig, *, arch: str | ArchSpec | None = None, source: dict | None = None
) -> Nern:
    """Build an untrained Nern for a checkpoint: architecture, layer plan, permutations, scales, raw tensors."""
    spec = arch if isinstance(arch, ArchSpec) else resolve_arch(arch, state_dict)
    model = build_model(spec, state_dict)  # validates keys and shapes against the architecture
    plan = plan_layers(
        model,
        hidden=config.hidden,
        kernel_sizes=config.kernel_sizes,
        raw_layers=config.raw_layers,
        min_kernels=config.min_kernels,
    )
    represented = {entry.name for entry in plan.layers}
    embedding = EmbeddingConfig(levels=config.levels, base=config.base)
    predictor_config = PredictorConfig(
        input_dim=embedding.dim, hidden=config.hidden, depth=config.depth, kernel_sizes=plan.kernel_sizes
    )
    return Nern(
        arch=spec,
        layers=plan.layers,
        embedding=embedding,
        predictor=build_predictor(predictor_config, seed=config.seed),
        positions={e.name: compute_positions(state_dict[e.name], config.permute) for e in plan.layers},
        scales={e.name: filter_scales(state_dict[e.name]) for e in plan.layers},
        raw={k: v.detach().clone() for k, v in state_dict.items() if k not in represented},
        key_order=list(state_dict.keys()),
        permute=config.permute,
        source=dict(source or {}),
        raw_convs=dict(plan.raw_convs),
    )


def fit(
    state_dict: dict[str, Tensor],
    config: FitConfig | None = None,
    *,
    arch: str | ArchSpec | None = None,
    device: str = "auto",
    on_step: StepCallback | None = None,
    source: dict | None = None,
) -> Nern:
    """Fit a predictor that regenerates every represented conv kernel of ``state_dict`` (reconstruction only).

    Args:
        state_dict: the checkpoint's tensors (see ``load_checkpoint``).
        config: the recipe; defaults to ``FitConfig()``.
        arch: architecture name or spec; None detects it from the keys and shapes.
        device: auto | cpu | cuda[:N].
        on_step: called as ``on_step(step, total, metrics)`` every few steps (progress reporting).
        source: provenance recorded in the artifact (file name, sha256...).

    Returns:
        The fitted Nern, its history holding one ``fit`` record.

    Example:
        >>> nern = fit(load_checkpoint("resnet20.th"), FitConfig(hidden=180))
    """
    config = config or FitConfig()
    torch_device = resolve_device(device)
    nern = init_nern(state_dict, config, arch=arch, source=source)
    nern.predictor.to(torch_device)
    started = time.perf_counter()
    metrics = train_reconstruction(nern, state_dict, config, device=torch_device, on_step=on_step)
    nern.predictor.cpu()
    nern.history.append(
        {
            "stage": "fit",
            "tool_version": __version__,
            "config": config.to_dict(),
            "device": torch_device.type,
            "steps": config.iters,
            **metrics,
            **{k: round(v, 6) for k, v in reconstruction_error(nern, state_dict).items()},
        }
    )
    if on_step is not None:
        on_step(config.iters, config.iters, {"seconds": time.perf_counter() - started})
    return nern


def train_reconstruction(
    nern: Nern,
    weights: dict[str, Tensor],
    config: FitConfig,
    *,
    device: torch.device,
    on_step: StepCallback | None = None,
    log_every: int = 50,
) -> dict[str, float]:
    """The reconstruction loop: sample kernels, regress, step. Returns the final training loss."""
    groups = _kernel_groups(nern, weights, device)
    total_kernels = sum(g.targets.shape[0] for g in groups)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    optimizer = torch.optim.Adam(nern.predictor.parameters(), lr=config.lr)
    predictor = nern.predictor.train()
    loss_value = float("nan")
    for step in range(config.iters):
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
            predicted = predictor(group.embeddings[index], group.kernel_size)
            squared_error = squared_error + (predicted - group.targets[index]).pow(2).sum()
            elements += predicted.numel()
        loss = squared_error / elements
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None and (step % log_every == 0 or step == config.iters - 1):
            loss_value = float(loss)
            on_step(step + 1, config.iters, {"loss": loss_value, "rmse": math.sqrt(loss_value), "lr": lr})
    predictor.eval()
    return {"final_loss": float(loss.detach())}
