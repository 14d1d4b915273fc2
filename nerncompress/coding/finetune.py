"""Fine-tuning of what is stored: the coded tensors trained through straight-through rounding against the original
network, so that the function is kept rather than the weights; and the held-out figures that judge the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data import ImageData, draw_batch, preset_stats
from ..errors import Interrupted
from ..losses import kd_loss
from ..models import ArchSpec
from ..optim import use_bf16
from .config import CodeConfig


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    latents: dict[str, Tensor],
    steps: dict[str, float],
    data: ImageData | None,
    config: CodeConfig,
    *,
    spec: ArchSpec,
    iters: int,
    generator: torch.Generator,
    device: torch.device,
    offsets: dict[str, Tensor] | None = None,
    on_step=None,
    stop: Callable[[], str | None] | None = None,
) -> float:
    """Train ``latents`` (key -> float tensor, replaced by the trained values) through straight-through rounding to
    ``steps``, so that ``student`` called with the rounded tensors matches ``teacher``'s outputs (KL) on ``data``
    (noise when None). A tensor with an offset (a predictor's output) is rounded on the grid shifted by it, as its
    residual is stored. ``stop()``, checked after every step, names a signal that ends the run (``Interrupted``).
    Returns the last loss.

    Each tensor's learning rate is ``lr_scale`` of its step: a weight crosses a rounding boundary in about
    ``0.5 / lr_scale`` consistent steps, whatever its layer's scale.
    """
    parameters = {key: value.detach().clone().to(device).requires_grad_(True) for key, value in latents.items()}
    optimizer = torch.optim.Adam([{"params": [value], "lr": config.lr_scale * steps[key]}
                                  for key, value in parameters.items()])  # fmt: skip
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(iters, 1)) if (
        config.lr_schedule == "cosine") else None  # fmt: skip
    mean, std = preset_stats(spec.preset)
    student, teacher = student.to(device), teacher.to(device)
    shifts = {key: value.to(device) for key, value in (offsets or {}).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config.precision, device))
    penalised = [key for key, value in parameters.items() if value.dim() >= 2]
    penalised_count = max(1, sum(parameters[key].numel() for key in penalised))
    loss = torch.zeros(())
    for step in range(iters):
        x = draw_batch(data, config.batch_size, mean=mean, std=std, shape=spec.input_shape, generator=generator,
                       mix=config.mix).to(device)  # fmt: skip
        with torch.no_grad(), autocast:
            target = teacher(x).float()
        rounded = {key: value + (_on_grid(value, steps[key], shifts.get(key)) - value).detach()
                   for key, value in parameters.items()}  # fmt: skip
        with autocast:
            logits = functional_call(student, rounded, (x,), strict=False)
        loss = kd_loss(logits.float(), target)
        if config.rate_penalty:
            magnitude = sum(((parameters[key] - shifts.get(key, 0.0)).abs() / steps[key]).sum()
                            for key in penalised) / penalised_count  # fmt: skip
            loss = loss + config.rate_penalty * magnitude
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if on_step is not None and (step % 10 == 0 or step == iters - 1):
            on_step(step + 1, iters, {"loss": float(loss.detach())})
        if stop is not None and stop():
            raise Interrupted(f"interrupted by {stop()} during fine-tuning: the search's last completed stage is saved; "
                              "run the same command with --resume to continue")
    for key, value in parameters.items():
        latents[key] = value.detach().cpu()
    student.cpu(), teacher.cpu()
    return float(loss.detach())


def _on_grid(value: Tensor, step: float, offset: Tensor | None) -> Tensor:
    if offset is None:
        return torch.round(value / step) * step
    return offset + torch.round((value - offset) / step) * step


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, state: dict[str, Tensor] | None = None) -> Tensor:
    """Predicted classes of ``model`` (holding ``state`` instead of its own tensors, when given) on ``x``."""
    call = (lambda batch: model(batch)) if state is None else (
        lambda batch: functional_call(model, state, (batch,), strict=False))  # fmt: skip
    return torch.cat([call(x[start : start + 250]).argmax(1) for start in range(0, x.shape[0], 250)])


@dataclass
class Holdout:
    """The held-out training images, their labels and the original network's answers on them."""

    x: Tensor
    labels: Tensor
    reference: Tensor

    @property
    def reference_top1(self) -> float:
        return 100.0 * float((self.reference == self.labels).float().mean())

    def figures(self, student: nn.Module, state: dict[str, Tensor]) -> tuple[float, float]:
        """(agreement with the original, top-1) of ``student`` holding ``state``."""
        predicted = predictions(student, self.x, state)
        return (100.0 * float((predicted == self.reference).float().mean()),
                100.0 * float((predicted == self.labels).float().mean()))  # fmt: skip
