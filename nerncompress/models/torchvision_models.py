"""Detectors for common torchvision ImageNet models, registered as ``torchvision:<name>``.

Each detector first checks cheap key patterns (block counts, basic vs bottleneck blocks, number of convs), then
compares every key and shape with the torchvision model built on the meta device, so look-alikes such as
``resnext50_32x4d`` or ``wide_resnet50_2`` are not mistaken for ``resnet50``. Other torchvision models still work
through ``--arch torchvision:<name>``; they are just not auto-detected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from .registry import TORCHVISION_LIMITS, TORCHVISION_PREFIX, Detector, matches_shapes, register_arch

__all__ = ["TORCHVISION_DETECTED"]

# name -> (blocks per stage, bottleneck blocks)
_RESNETS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
# name -> number of convolutions in ``features``
_VGGS: dict[str, int] = {"vgg11_bn": 8, "vgg16_bn": 13}

TORCHVISION_DETECTED: tuple[str, ...] = (*_RESNETS, *_VGGS, "mobilenet_v2")


def _builder(tv_name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(tv_name, weights=None, **kwargs)

    build.__name__ = tv_name
    build.__doc__ = f"torchvision.models.{tv_name}(weights=None, **kwargs)"
    return build


def _rows(state_dict: Mapping[str, Tensor], key: str) -> int | None:
    tensor = state_dict.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else None


def _verified(tv_name: str, state_dict: Mapping[str, Tensor], num_classes: int) -> dict[str, Any] | None:
    if matches_shapes(state_dict, lambda: _builder(tv_name)(num_classes=num_classes)):
        return {"num_classes": num_classes}
    return None


def _resnet_detector(tv_name: str) -> Detector:
    blocks, bottleneck = _RESNETS[tv_name]

    def detect(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
        num_classes = _rows(state_dict, "fc.weight")
        if num_classes is None or "conv1.weight" not in state_dict:
            return None
        if ("layer1.0.conv3.weight" in state_dict) != bottleneck:
            return None
        for stage, count in enumerate(blocks, start=1):
            if f"layer{stage}.{count - 1}.conv1.weight" not in state_dict or f"layer{stage}.{count}.conv1.weight" in state_dict:
                return None
        return _verified(tv_name, state_dict, num_classes)

    return detect


def _vgg_detector(tv_name: str) -> Detector:
    convs = _VGGS[tv_name]

    def detect(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
        num_classes = _rows(state_dict, "classifier.6.weight")
        if num_classes is None:
            return None
        found = sum(1 for k, v in state_dict.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4)
        if found != convs:
            return None
        return _verified(tv_name, state_dict, num_classes)

    return detect


def _detect_mobilenet_v2(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
    num_classes = _rows(state_dict, "classifier.1.weight")
    if num_classes is None or "features.0.0.weight" not in state_dict or "features.18.0.weight" not in state_dict:
        return None
    return _verified("mobilenet_v2", state_dict, num_classes)


def _register() -> None:
    detectors: dict[str, Detector] = {name: _resnet_detector(name) for name in _RESNETS}
    detectors.update({name: _vgg_detector(name) for name in _VGGS})
    detectors["mobilenet_v2"] = _detect_mobilenet_v2
    for tv_name, detector in detectors.items():
        register_arch(
            TORCHVISION_PREFIX + tv_name, detector=detector, preset="imagenet", input_shape=(3, 224, 224),
            limits=TORCHVISION_LIMITS,
        )(_builder(tv_name))  # fmt: skip


_register()
