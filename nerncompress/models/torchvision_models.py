"""Auto-detection of every torchvision classification model, with any ``num_classes``, from keys and shapes.

The candidates are the names of ``torchvision.models.list_models(module=torchvision.models)``: ResNet, Wide ResNet,
ResNeXt, VGG (with and without BatchNorm), MobileNet v2/v3, EfficientNet b0-b7 and v2, ConvNeXt, DenseNet,
RegNet X/Y, ShuffleNet v2, SqueezeNet, MnasNet, GoogLeNet, Inception v3, AlexNet, ViT, Swin (v1, v2) and MaxViT.
A detected checkpoint gets the spec ``torchvision:<name>`` with the kwargs read off it; it is built with
``torchvision.models.get_model(name, weights=None, **kwargs)``.

How: an index (``torchvision_index.py``, written by :func:`write_index` from the installed torchvision) holds one
line per model configuration: a digest of its key set, a digest of its keys and shapes with the class dimension
left open, the keys that carry ``num_classes`` (the "head") and its native input size. A checkpoint's key-set
digest picks the few configurations with its keys (``resnet50``, ``resnext50_32x4d`` and ``wide_resnet50_2`` share
theirs), ``num_classes`` is read off the head, and the shape digest keeps the configurations that fit exactly; no
model is built. A kwarg read off another shape (a ViT's ``image_size``, from its position embedding) is checked by
building the model on the meta device. When the installed torchvision is not the one the index was written for,
the index is rebuilt in memory on first use, by building every configuration on the meta device (once a process).

Configurations: every name with its default kwargs, plus ``aux_logits=False`` for ``googlenet`` and
``inception_v3`` (as their pretrained weights come; the default has the auxiliary classifiers). Input shape: a
ViT's ``image_size``, else the crop size of the name's DEFAULT weights (e.g. 299 for inception_v3, 600 for
efficientnet_b7, 256 for swin_v2_*); nothing is downloaded.

Not detected, or not fully:

* Kwargs that change shapes and are not read back: ``mobilenet_v2(width_mult=...)``, ``vit_*(representation_size=
  ...)``, Swin or MaxViT with another window or partition size, any other non-default constructor argument: no
  configuration fits, so detection fails; pass ``--arch pkg.module:function`` (a builder making that model).
* Kwargs that change no shape cannot be read back at all: ``googlenet`` and ``inception_v3`` with
  ``transform_input=True`` (their pretrained weights' setting; the spec keeps the default False), a ViT's
  ``dropout``; pass a user builder when they matter. ``efficientnet_v2_l``'s pretrained weights expect mean = std =
  0.5, which the ``imagenet`` preset of its spec does not say.
* MNASNet checkpoints of the version-1 layout (saved by old torchvision with ``alpha != 1``) have another stem and
  fit no configuration.
* Two configurations with identical keys and shapes could not be told apart; detection then fails, naming both
  and asking for ``--arch torchvision:NAME``. No two configurations of the indexed torchvision are alike (tested).
* The other torchvision families (quantized, detection, segmentation, video, optical flow) are not candidates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .registry import (
    TORCHVISION_PREFIX,
    ArchSpec,
    Shapes,
    build_on_meta,
    build_torchvision,
    register_family,
)

__all__ = ["build_index", "detect_torchvision", "detectable_models", "fit_torchvision", "write_index"]

_INDEX_FILE = Path(__file__).with_name("torchvision_index.py")
_BN_COUNTER = "num_batches_tracked"
# num_classes of the model built to find the head: a prime no other dimension of a torchvision model has.
PROBE_CLASSES = 1237
_DEFAULT_INPUT_SIZE = 224
# Extra configurations besides each name's defaults: how pretrained weights come.
_VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "googlenet": ({"aux_logits": False},),
    "inception_v3": ({"aux_logits": False},),
}
# A ViT's position embedding, (1, 1 + (image_size / patch)^2, hidden): its image_size is read off dimension 1,
# which the shape digest leaves open.
_VIT_POSITIONS = "encoder.pos_embedding"


@dataclasses.dataclass(frozen=True)
class Config:
    """One torchvision model configuration as the index holds it.

    Attributes:
        name: the torchvision name.
        kwargs: builder kwargs besides ``num_classes`` (e.g. ``{"aux_logits": False}``); empty for the defaults.
        keys: digest of the sorted keys, ``num_batches_tracked`` buffers left out.
        counters: digest of the sorted ``num_batches_tracked`` keys (checkpoints may lack them all).
        shapes: digest of the keys and shapes, the head's class dimension and open dimensions written ``*``.
        head: ``(key, dim)`` pairs whose dimension ``dim`` is ``num_classes``.
        input_size: native input height and width.
    """

    name: str
    kwargs: dict[str, Any]
    keys: str
    counters: str
    shapes: str
    head: tuple[tuple[str, int], ...]
    input_size: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        return cls(**{**data, "kwargs": dict(data["kwargs"]), "head": tuple((k, int(d)) for k, d in data["head"])})


# ------------------------------------------------------------------------------------------------------ digests
def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def _split_keys(keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sorted (keys, num_batches_tracked keys)."""
    ordered = sorted(keys)
    return [k for k in ordered if not k.endswith(_BN_COUNTER)], [k for k in ordered if k.endswith(_BN_COUNTER)]


def _open_dims(name: str) -> dict[str, int]:
    return {_VIT_POSITIONS: 1} if name.startswith("vit_") else {}


def _shape_digest(keys: list[str], shapes: Mapping[str, tuple[int, ...]], open_dims: Mapping[str, int]) -> str:
    lines = []
    for key in keys:
        dims = [str(d) for d in shapes[key]]
        if key in open_dims and open_dims[key] < len(dims):
            dims[open_dims[key]] = "*"
        lines.append(f"{key}:{','.join(dims)}")
    return _digest(lines)


# -------------------------------------------------------------------------------------------------------- index
def _names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_version() -> str:
    """The installed torchvision's version without its local part, read without importing it (seconds)."""
    try:
        return importlib.metadata.version("torchvision").partition("+")[0]
    except importlib.metadata.PackageNotFoundError:
        import torchvision

        return torchvision.__version__.partition("+")[0]


def _build(name: str, **kwargs: Any) -> nn.Module:
    return build_torchvision(name, kwargs)


def _crop_size(name: str) -> int:
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms
        return int(transforms.keywords.get("crop_size", _DEFAULT_INPUT_SIZE))
    except (AttributeError, KeyError, TypeError, ValueError):
        return _DEFAULT_INPUT_SIZE


def _make_config(name: str, kwargs: dict[str, Any]) -> Config:
    model = build_on_meta(lambda: _build(name, num_classes=PROBE_CLASSES, **kwargs))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    head = tuple((key, shape.index(PROBE_CLASSES)) for key, shape in shapes.items() if PROBE_CLASSES in shape)
    if not head:
        raise ValueError(f"torchvision model {name} {kwargs}: no tensor has the num_classes dimension")
    keys, counters = _split_keys(shapes)
    open_dims = {**_open_dims(name), **dict(head)}
    image_size = getattr(model, "image_size", None)
    size = image_size if isinstance(image_size, int) else _crop_size(name)
    return Config(name, kwargs, _digest(keys), _digest(counters), _shape_digest(keys, shapes, open_dims), head, size)


def build_index(names: Iterable[str] | None = None) -> list[Config]:
    """Describe every configuration of ``names`` (default: all torchvision classification models).

    Each model is built on the meta device: no memory, no initialisation, nothing downloaded.

    Args:
        names: torchvision model names.

    Returns:
        The configurations: each name with its default kwargs, then its variants.
    """
    configs = []
    for name in _names() if names is None else names:
        for kwargs in ({}, *_VARIANTS.get(name, ())):
            configs.append(_make_config(name, dict(kwargs)))
    return configs


def write_index(path: Path = _INDEX_FILE) -> Path:
    """Write the index of the installed torchvision to ``path`` (by default the package's own index module).

    Run after upgrading torchvision: ``python -c "from nerncompress.models.torchvision_models import write_index;
    write_index()"``.

    Args:
        path: the Python file to write.

    Returns:
        ``path``.
    """
    body = "".join(f"    {config.to_dict()!r},\n" for config in build_index())  # one configuration a line
    path.write_text(
        '"""The index of ``torchvision_models.py``, written by its ``write_index()``: do not edit."""\n\n'
        f"TORCHVISION_VERSION = {_torchvision_version()!r}\n"
        f"PROBE_CLASSES = {PROBE_CLASSES}\n"
        f"CONFIGS = [\n{body}]\n"
    )
    return path


@functools.lru_cache(maxsize=1)
def _index() -> tuple[Config, ...]:
    from . import torchvision_index

    stored = (torchvision_index.TORCHVISION_VERSION, torchvision_index.PROBE_CLASSES)
    if stored == (_torchvision_version(), PROBE_CLASSES):
        return tuple(Config.from_dict(data) for data in torchvision_index.CONFIGS)
    return tuple(build_index())  # another torchvision: its models may differ from the stored ones


@functools.lru_cache(maxsize=1)
def _by_keys() -> dict[str, tuple[Config, ...]]:
    table: dict[str, list[Config]] = {}
    for config in _index():
        table.setdefault(config.keys, []).append(config)
    return {digest: tuple(configs) for digest, configs in table.items()}


def detectable_models() -> list[str]:
    """The torchvision names that auto-detection knows, sorted (every classification model)."""
    return sorted({config.name for config in _index()})


# ----------------------------------------------------------------------------------------------------- matching
@functools.lru_cache(maxsize=16)
def _reference_shapes(name: str, kwargs_json: str) -> Shapes:
    kwargs = json.loads(kwargs_json)
    model = build_on_meta(lambda: _build(name, **kwargs))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _num_classes(config: Config, shapes: Shapes) -> int | None:
    counts = set()
    for key, dim in config.head:
        shape = shapes[key]
        if dim >= len(shape):
            return None
        counts.add(int(shape[dim]))
    return counts.pop() if len(counts) == 1 and min(counts) >= 1 else None


def _read_kwargs(config: Config, shapes: Shapes) -> dict[str, Any] | None:
    """Kwargs read off open dimensions (a ViT's image_size), beyond the defaults; None when they cannot be."""
    if not config.name.startswith("vit_"):
        return {}
    positions = int(shapes[_VIT_POSITIONS][1]) - 1  # the class token comes first
    patch = int(shapes["conv_proj.weight"][-1])
    side = math.isqrt(max(positions, 0))
    if side * side != positions or side == 0:
        return None
    return {} if side * patch == config.input_size else {"image_size": side * patch}


def _fit_config(config: Config, shapes: Shapes, keys: list[str]) -> ArchSpec | None:
    num_classes = _num_classes(config, shapes)
    read = _read_kwargs(config, shapes)
    if num_classes is None or read is None:
        return None
    if _shape_digest(keys, shapes, {**_open_dims(config.name), **dict(config.head)}) != config.shapes:
        return None
    kwargs = {"num_classes": num_classes, **config.kwargs, **read}
    if read:  # a kwarg read off a shape: check that the model built with it has exactly these shapes
        reference = _reference_shapes(config.name, json.dumps(kwargs, sort_keys=True))
        if not _same_shapes(shapes, reference):
            return None
    size = int(read.get("image_size", config.input_size))
    return ArchSpec(TORCHVISION_PREFIX + config.name, kwargs, preset="imagenet", input_shape=(3, size, size))


def _same_shapes(shapes: Shapes, reference: Shapes) -> bool:
    """``shapes_match`` on shapes: the same keys and shapes, ``num_batches_tracked`` keys possibly absent."""
    wanted = {key for key in reference if not key.endswith(_BN_COUNTER) or key in shapes}
    return set(shapes) == wanted and all(tuple(shapes[key]) == tuple(reference[key]) for key in wanted)


def _candidates(shapes: Shapes) -> tuple[list[str], list[Config]]:
    keys, counters = _split_keys(shapes)
    configs = _by_keys().get(_digest(keys), ())
    if counters:  # checkpoints may lack every num_batches_tracked, but not have foreign ones
        configs = tuple(config for config in configs if config.counters == _digest(counters))
    return keys, list(configs)


def _shapes_of(state_dict: Mapping[str, Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def detect_torchvision(state_dict: Mapping[str, Tensor]) -> list[ArchSpec]:
    """Every torchvision configuration that ``state_dict`` fits exactly.

    Args:
        state_dict: a normalised checkpoint (see ``checkpoint.normalize_state_dict``).

    Returns:
        The specs, usually none or one; several only for look-alike configurations.
    """
    shapes = _shapes_of(state_dict)
    keys, configs = _candidates(shapes)
    found = (_fit_config(config, shapes, keys) for config in configs)
    return [spec for spec in found if spec is not None]


def fit_torchvision(name: str, state_dict: Mapping[str, Tensor]) -> ArchSpec | None:
    """The spec of torchvision model ``name`` that ``state_dict`` fits exactly (kwargs read off it), or None."""
    return torchvision_spec_of_shapes(name, _shapes_of(state_dict))


def torchvision_spec_of_shapes(name: str, shapes: Shapes) -> ArchSpec | None:
    """The spec of torchvision model ``name`` whose state_dict has exactly these keys and shapes, or None; read off
    the index of digests, so torchvision is imported only when a shape decides a kwarg (a ViT's image size)."""
    keys, configs = _candidates(shapes)
    found = (_fit_config(config, shapes, keys) for config in configs if config.name == name)
    return next((spec for spec in found if spec is not None), None)


register_family(
    TORCHVISION_PREFIX,
    label=f"{TORCHVISION_PREFIX}<every classification model>",
    detect=detect_torchvision,
    fit=fit_torchvision,
)
