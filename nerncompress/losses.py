"""Losses: reconstruction (kernels), knowledge distillation (logits) and feature-map distillation.

All return scalar tensors and are differentiable with respect to their first argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn


def reconstruction_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and original (normalised) kernels, both (N, k*k)."""
    return F.mse_loss(predicted, target)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) of the temperature-softened output distributions, times T^2 (Hinton et al.).

    Args:
        student_logits, teacher_logits: float (B, classes).
        temperature: T > 0; T^2 keeps gradient magnitudes comparable across temperatures.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def logit_mse_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the logits, after removing each row's mean (softmax ignores a shift).

    Matches the teacher's whole output, not only its distribution at one temperature: the limit of KD at high
    temperature (Hinton et al., 2015).
    """
    student = student_logits - student_logits.mean(dim=1, keepdim=True)
    teacher = teacher_logits - teacher_logits.mean(dim=1, keepdim=True)
    return (student - teacher).pow(2).mean()


def feature_map_loss(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    """NeRN's feature-map distillation: squared difference of per-sample L2-normalised feature maps, summed over
    the tapped layers and averaged over the batch."""
    if len(student_features) != len(teacher_features):
        raise ValueError(f"{len(student_features)} student feature maps but {len(teacher_features)} teacher ones")
    total = student_features[0].new_zeros(())
    for student, teacher in zip(student_features, teacher_features, strict=True):
        s = F.normalize(student.flatten(1), dim=1)
        t = F.normalize(teacher.flatten(1), dim=1)
        total = total + (s - t).pow(2).sum(dim=1).mean()
    return total


def feature_taps(model: nn.Module) -> list[nn.Module]:
    """Modules whose outputs feature-map distillation compares: every BatchNorm, and every block of an
    ``nn.Sequential`` stage that contains one (the output of a residual block is its residual sum)."""
    taps: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            taps.append(module)
        elif isinstance(module, nn.Sequential):
            for child in module.children():
                if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in child.modules()) and not isinstance(
                    child, nn.modules.batchnorm._BatchNorm
                ):
                    taps.append(child)
    return taps


@contextmanager
def capture_features(modules: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``modules`` during forward passes inside the block, in call order."""
    captured: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
