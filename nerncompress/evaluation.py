"""Measuring a classifier on an :class:`~nerncompress.data.ImageData`: logits, top-1 accuracy, agreement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import ImageData, iterate_batches
from .devices import resolve_device
from .errors import DataError, UsageError
from .progress import StepCallback


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        top1: top-1 accuracy in percent (0..100).
        count: number of images evaluated.
        predictions: int64 ``(count,)`` predicted class per image, on the CPU, in dataset order.
    """

    top1: float
    count: int
    predictions: Tensor

    def agreement(self, other: EvalResult) -> float:
        """Share of images on which two models predict the same class.

        Args:
            other: a result on the same images, in the same order.

        Returns:
            Percent (0..100) of equal predictions.

        Raises:
            ValueError: when the two results cover different numbers of images, or none.
        """
        if self.predictions.shape != other.predictions.shape:
            raise ValueError(
                f"cannot compare predictions on {self.predictions.numel()} and {other.predictions.numel()} images: "
                "evaluate both models on the same data"
            )
        if self.predictions.numel() == 0:
            raise ValueError("cannot compare empty predictions")
        same = (self.predictions.cpu() == other.predictions.cpu()).sum().item()
        return 100.0 * same / self.predictions.numel()


def predict_logits(
    model: nn.Module,
    data: ImageData,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "auto",
    batch_size: int = 500,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Run a classifier over a dataset, in eval mode and without autograd.

    The model is moved to ``device`` in place (and stays there); its train/eval mode is restored afterwards.

    Args:
        model: maps float32 ``(B, C, H, W)`` to logits ``(B, classes)``.
        data: the images and labels; labels are not used.
        mean: per-channel normalisation mean (see :func:`nerncompress.data.to_float`).
        std: per-channel normalisation std.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        batch_size: images per forward pass.
        on_step: progress, called as ``on_step(images done, total, {})`` after every batch.

    Returns:
        float32 ``(N, classes)`` logits on the CPU, in dataset order.

    Raises:
        UsageError: for a bad device, batch size or normalisation, images the model cannot take, or a model whose
            output is not a ``(B, classes)`` tensor.
        DataError: for an empty dataset.
    """
    if len(data) == 0:
        raise DataError(f"{data.source}: cannot evaluate on an empty dataset: give at least one image")
    dev = resolve_device(device)
    batches = iterate_batches(data, batch_size=batch_size, mean=mean, std=std, device=dev)
    was_training = model.training
    model.to(dev)
    model.eval()
    outputs: list[Tensor] = []
    try:
        with torch.inference_mode():
            for x, _ in batches:
                try:
                    out = model(x)
                except RuntimeError as exc:
                    raise UsageError(
                        f"{data.source}: the model cannot take images of shape {tuple(x.shape[1:])} "
                        f"({str(exc).splitlines()[0][:120]}): use data of the model's input size"
                    ) from exc
                if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise UsageError(
                        f"model returned {got} for a batch of {x.shape[0]}: it must return (batch, classes) logits"
                    )
                outputs.append(out.float().cpu())
                if on_step is not None:
                    done = sum(len(o) for o in outputs)
                    on_step(done, len(data), {})
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def evaluate(
    model: nn.Module,
    data: ImageData,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "auto",
    batch_size: int = 500,
    on_step: StepCallback | None = None,
) -> EvalResult:
    """Top-1 accuracy of a classifier on a labelled dataset.

    Args:
        model: maps float32 ``(B, C, H, W)`` to logits ``(B, classes)``; moved to ``device`` in place.
        data: the images and labels, N >= 1.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        batch_size: images per forward pass.
        on_step: progress, as in :func:`predict_logits`.

    Returns:
        :class:`EvalResult` with top-1 in percent, the image count and the int64 ``(N,)`` predictions.

    Raises:
        UsageError: as :func:`predict_logits`, and labels beyond the classes the model predicts (data of another
            task: its top-1 would be meaningless).
        DataError: for an empty dataset.
    """
    logits = predict_logits(model, data, mean=mean, std=std, device=device, batch_size=batch_size, on_step=on_step)
    classes = logits.shape[1]
    highest = int(data.labels.max()) if len(data) else 0
    if highest >= classes:
        raise UsageError(
            f"{data.source} has labels up to {highest} but the model predicts {classes} classes: evaluate it on data "
            "of its own task"
        )
    predictions = logits.argmax(dim=1).to(torch.int64)
    correct = int((predictions == data.labels.cpu()).sum().item())
    return EvalResult(top1=100.0 * correct / len(data), count=len(data), predictions=predictions)


def most_faithful(candidates: Sequence[EvalResult], reference: EvalResult) -> tuple[int, list[float]]:
    """Which candidate agrees most with a reference model on the same images.

    Used to keep the best of several runs (e.g. seeds): the images must be ones no candidate trained on, such as
    distill's held-out share of the training data, never the test set.

    Args:
        candidates: one result per candidate, all on the reference's images.
        reference: the result of the model the candidates should reproduce.

    Returns:
        ``(index, agreements)``: the index of the most faithful candidate (the first one on ties) and every
        candidate's agreement in percent, in the order given.

    Raises:
        ValueError: for no candidates, or results on different numbers of images.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    agreements = [candidate.agreement(reference) for candidate in candidates]
    return agreements.index(max(agreements)), agreements
