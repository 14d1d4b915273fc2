"""Tests of nerncompress.evaluation: logits, top-1 and agreement on tiny models with known outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nerncompress.data import ImageData
from nerncompress.errors import DataError, UsageError
from nerncompress.evaluation import EvalResult, evaluate, most_faithful, predict_logits

NUM_CLASSES = 4
NONE = {"mean": (0.0,), "std": (1.0,)}  # the "none" preset: pixels arrive as value / 255


class FirstPixelClassifier(nn.Module):
    """Predicts the class stored in the first pixel (as a uint8 value), and records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # gives the module a device and something autograd could track
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], self.training, torch.is_inference_mode_enabled()))
        cls = torch.round(x[:, 0, 0, 0] * 255).long()
        return nn.functional.one_hot(cls, NUM_CLASSES).float() * self.scale


def _data(predicted: list[int], labels: list[int]) -> ImageData:
    images = torch.zeros((len(predicted), 3, 3, 3), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.uint8)
    return ImageData(images, torch.tensor(labels, dtype=torch.int64), "tiny")


def test_evaluate_gives_exact_top1_across_batches() -> None:
    predicted = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    labels = [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]  # the first 7 agree
    model = FirstPixelClassifier().train()
    result = evaluate(model, _data(predicted, labels), **NONE, device="cpu", batch_size=4)
    assert result.top1 == pytest.approx(70.0)
    assert result.count == 10
    assert result.predictions.dtype == torch.int64 and result.predictions.tolist() == predicted
    assert [batch for batch, _, _ in model.calls] == [4, 4, 2]
    assert all(not training and inference for _, training, inference in model.calls)
    assert model.training  # the caller's mode is restored


def test_predict_logits_shape_and_dtype() -> None:
    logits = predict_logits(FirstPixelClassifier(), _data([3, 1, 2], [0, 0, 0]), **NONE, device="cpu", batch_size=2)
    assert logits.shape == (3, NUM_CLASSES) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.argmax(1).tolist() == [3, 1, 2]
    assert not logits.requires_grad


def test_bad_model_output_and_empty_data() -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten()

    with pytest.raises(UsageError, match="must return \\(batch, classes\\) logits"):
        evaluate(Flat(), _data([0, 1], [0, 1]), **NONE, device="cpu")
    empty = ImageData(torch.zeros((0, 3, 3, 3), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), "none")
    with pytest.raises(DataError):
        evaluate(FirstPixelClassifier(), empty, **NONE, device="cpu")
    with pytest.raises(UsageError):
        evaluate(FirstPixelClassifier(), _data([0], [0]), mean=(0.1, 0.2), std=(1.0, 1.0), device="cpu")


def test_agreement_math() -> None:
    a = EvalResult(top1=50.0, count=4, predictions=torch.tensor([0, 1, 2, 3]))
    b = EvalResult(top1=25.0, count=4, predictions=torch.tensor([0, 1, 2, 0]))
    assert a.agreement(b) == pytest.approx(75.0)
    assert b.agreement(a) == pytest.approx(75.0)
    assert a.agreement(a) == 100.0
    with pytest.raises(ValueError):
        a.agreement(EvalResult(top1=0.0, count=3, predictions=torch.tensor([0, 1, 2])))
    empty = EvalResult(top1=0.0, count=0, predictions=torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError):
        empty.agreement(empty)


def test_agreement_between_two_evaluations() -> None:
    data = _data([0, 1, 2, 3, 3], [0, 1, 2, 3, 3])
    other = _data([0, 1, 0, 0, 3], [0, 1, 2, 3, 3])
    first = evaluate(FirstPixelClassifier(), data, **NONE, device="cpu")
    second = evaluate(FirstPixelClassifier(), other, **NONE, device="cpu")
    assert first.top1 == 100.0 and second.top1 == pytest.approx(60.0)
    assert first.agreement(second) == pytest.approx(60.0)


def test_most_faithful_prefers_agreement_then_the_first_given():
    def result(*predictions):
        return EvalResult(top1=0.0, count=len(predictions), predictions=torch.tensor(predictions))

    reference = result(0, 1, 2, 3)
    best, agreements = most_faithful([result(0, 1, 0, 0), result(0, 1, 2, 0), result(9, 1, 2, 3)], reference)
    assert best == 1 and agreements == [50.0, 75.0, 75.0]
    with pytest.raises(ValueError):
        most_faithful([], reference)
    with pytest.raises(ValueError):
        most_faithful([result(0, 1)], reference)
