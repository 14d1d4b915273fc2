"""CIFAR ResNet of He et al. (2016) with the parameter-free option-A shortcut.

Module and parameter names follow github.com/akamaster/pytorch_resnet_cifar10, so its checkpoints (after stripping
the ``module.`` prefix) load strictly: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``.
Depth is ``6n + 2`` (n basic blocks per stage); stages have ``width``, ``2*width`` and ``4*width`` channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import MAX_NUM_CLASSES, matches_shapes, register_arch

__all__ = ["BasicBlock", "CifarResNet", "PadShortcut", "cifar_resnet", "detect_cifar_resnet"]

_DEFAULT_WIDTH = 16
# What a .nern may ask for without --trust-code: up to ResNet-1202 (the paper's deepest) and 64x its width.
LIMITS = {"depth": 1202, "width": 1024, "num_classes": MAX_NUM_CLASSES}


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side.

    A module rather than akamaster's ``LambdaLayer(lambda ...)`` so that the model pickles and exports to ONNX.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: int = _DEFAULT_WIDTH) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(2 * width, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(4 * width, blocks_per_stage, stride=2)
        self.linear = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool; equals akamaster's avg_pool2d(out, out.size()[3]) on square maps and exports to ONNX
        # as GlobalAveragePool without baking in the spatial size.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def _blocks(depth: int) -> int:
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise TypeError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


def _count_blocks(state_dict: Mapping[str, Tensor], stage: int) -> int:
    count = 0
    while f"layer{stage}.{count}.conv1.weight" in state_dict:
        count += 1
    return count


def detect_cifar_resnet(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Read depth, num_classes and width off an akamaster-style state_dict.

    Args:
        state_dict: a normalised state_dict.

    Returns:
        ``{"depth", "num_classes"}`` (plus ``"width"`` when it is not 16), or ``None`` when the keys or shapes are
        not exactly those of a CIFAR ResNet.
    """
    conv1 = state_dict.get("conv1.weight")
    linear = state_dict.get("linear.weight")
    if conv1 is None or linear is None or conv1.ndim != 4 or linear.ndim != 2 or "layer4.0.conv1.weight" in state_dict:
        return None
    if tuple(conv1.shape[1:]) != (3, 3, 3) or conv1.shape[0] % 2:
        return None
    counts = {_count_blocks(state_dict, stage) for stage in (1, 2, 3)}
    if len(counts) != 1 or 0 in counts:
        return None
    kwargs: dict[str, Any] = {"depth": 6 * counts.pop() + 2, "num_classes": int(linear.shape[0])}
    width = int(conv1.shape[0])
    if width != _DEFAULT_WIDTH:
        kwargs["width"] = width
    if not matches_shapes(state_dict, lambda: cifar_resnet(**kwargs)):
        return None
    return kwargs


@register_arch(
    "cifar_resnet", detector=detect_cifar_resnet, preset="imagenet", input_shape=(3, 32, 32), limits=LIMITS
)
def cifar_resnet(*, depth: int = 20, num_classes: int = 10, width: int = _DEFAULT_WIDTH) -> CifarResNet:
    """Build a CIFAR ResNet.

    The preset is ``"imagenet"`` because the akamaster checkpoints were trained with ImageNet mean/std.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, 1202, ...).
        num_classes: classifier outputs.
        width: channels of the first stage (16 in the paper); must be even.

    Returns:
        The untrained model.

    Raises:
        TypeError: for a depth that is not 6n+2 or an odd width (``get_arch`` turns it into ArchDetectionError).
    """
    if not isinstance(width, int) or width < 2 or width % 2:
        raise TypeError(f"width must be an even int >= 2, got {width!r}")
    return CifarResNet(_blocks(depth), num_classes=num_classes, width=width)
