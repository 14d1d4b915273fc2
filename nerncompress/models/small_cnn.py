"""A small CNN for scikit-learn's 8x8 digits, used by the embedded demo.

Layout: ``features`` (five conv-BN-ReLU triples: 3x3 1->w, 3x3 w->w, 3x3 stride-2 w->2w, 3x3 2w->2w, 1x1 2w->2w),
global average pool, ``classifier`` (Linear 2w -> num_classes). Conv weights live at ``features.{0,3,6,9,12}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .registry import MAX_NUM_CLASSES, matches_shapes, register_arch

__all__ = ["DigitsCNN", "detect_digits_cnn", "digits_cnn"]

_DEFAULT_WIDTH = 32


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DigitsCNN(nn.Module):
    """Five conv-BN-ReLU layers, global average pool, one Linear layer; input (N, 1, 8, 8)."""

    def __init__(self, width: int = _DEFAULT_WIDTH, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w, 3),
            *_conv_bn_relu(w, w, 3),
            *_conv_bn_relu(w, 2 * w, 3, stride=2),
            *_conv_bn_relu(2 * w, 2 * w, 3),
            *_conv_bn_relu(2 * w, 2 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def detect_digits_cnn(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Read width and num_classes off a DigitsCNN state_dict.

    Args:
        state_dict: a normalised state_dict.

    Returns:
        ``{"width", "num_classes"}``, or ``None`` when the keys or shapes are not exactly those of a DigitsCNN.
    """
    first = state_dict.get("features.0.weight")
    head = state_dict.get("classifier.weight")
    if first is None or head is None or first.ndim != 4 or head.ndim != 2 or tuple(first.shape[1:]) != (1, 3, 3):
        return None
    kwargs: dict[str, Any] = {"width": int(first.shape[0]), "num_classes": int(head.shape[0])}
    if not matches_shapes(state_dict, lambda: digits_cnn(**kwargs)):
        return None
    return kwargs


@register_arch(
    "digits_cnn", detector=detect_digits_cnn, preset="digits", input_shape=(1, 8, 8),
    limits={"width": 1024, "num_classes": MAX_NUM_CLASSES},
)  # fmt: skip
def digits_cnn(*, width: int = _DEFAULT_WIDTH, num_classes: int = 10) -> DigitsCNN:
    """Build the digits CNN.

    Args:
        width: channels of the first two convs (the last three have ``2 * width``).
        num_classes: classifier outputs.

    Returns:
        The untrained model.
    """
    return DigitsCNN(width=width, num_classes=num_classes)
