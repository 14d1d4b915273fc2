"""Which conv weights the predictor represents, and which are stored as they are.

Conv layers are found generically: every ``nn.Conv2d`` of the built architecture, by its state_dict key. A layer
is *represented* when its kernels are square and its kernel size gets a predictor head; everything else (other
layers, biases, BN statistics, linear layers, non-square kernels) is stored raw, losslessly, under its original key.

Kernel sizes get a head automatically when the model holds enough weights of that size for a head to pay for
itself: a 7x7 head costs hidden * 49 parameters, more than a ResNet-18 stem's 9,408 weights at large hidden sizes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from torch import nn

from .errors import CheckpointError

# A kernel size gets a head only if its weights outnumber the head's parameters by this factor.
HEAD_PAYOFF = 2.0


@dataclass(frozen=True)
class LayerEntry:
    """One represented conv weight.

    Attributes:
        name: state_dict key of the weight, e.g. ``layer1.0.conv1.weight``.
        shape: (C_out, C_in per group, k, k).
        layer_index: position among the represented layers (the first coordinate).
    """

    name: str
    shape: tuple[int, int, int, int]
    layer_index: int

    @property
    def c_out(self) -> int:
        return self.shape[0]

    @property
    def c_in(self) -> int:
        return self.shape[1]

    @property
    def kernel_size(self) -> int:
        return self.shape[2]

    @property
    def num_kernels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def num_weights(self) -> int:
        return self.num_kernels * self.kernel_size**2

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "layer_index": self.layer_index}

    @classmethod
    def from_dict(cls, data: dict) -> LayerEntry:
        shape = tuple(int(s) for s in data["shape"])
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(f"layer {data.get('name')!r} has a non-square or non-4D shape {shape}")
        return cls(name=str(data["name"]), shape=shape, layer_index=int(data["layer_index"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerPlan:
    """The represented layers in forward order, the kernel sizes with heads, and why others stay raw."""

    layers: list[LayerEntry]
    kernel_sizes: tuple[int, ...]
    raw_convs: dict[str, str]  # state_dict key -> reason it is stored raw

    def to_dict(self) -> dict:
        return asdict(self)


def find_convs(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Every Conv2d weight of a model as (state_dict key, shape), in module registration order."""
    return [
        (f"{name}.weight" if name else "weight", tuple(module.weight.shape))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]


def plan_layers(
    model: nn.Module,
    *,
    hidden: int,
    kernel_sizes: tuple[int, ...] | None = None,
    raw_layers: tuple[str, ...] = (),
    min_kernels: int = 0,
) -> LayerPlan:
    """Decide which conv weights the predictor represents.

    Args:
        model: the architecture, built (weights irrelevant).
        hidden: predictor width, used to price a head.
        kernel_sizes: sizes that get a head; None chooses them by ``HEAD_PAYOFF``.
        raw_layers: state_dict keys to keep raw regardless.
        min_kernels: layers with fewer kernels than this stay raw (tiny layers are cheap to store exactly).

    Returns:
        The plan. Raises CheckpointError when nothing is left to represent.
    """
    convs = find_convs(model)
    square = [(key, shape) for key, shape in convs if len(shape) == 4 and shape[2] == shape[3]]
    if kernel_sizes is None:
        weights_per_size: Counter[int] = Counter()
        for key, shape in square:
            weights_per_size[shape[2]] += shape[0] * shape[1] * shape[2] * shape[3]
        kernel_sizes = tuple(
            sorted(k for k, n in weights_per_size.items() if n >= HEAD_PAYOFF * (hidden + 1) * k * k)
        )
    raw: dict[str, str] = {}
    layers: list[LayerEntry] = []
    for key, shape in convs:
        if len(shape) != 4 or shape[2] != shape[3]:
            raw[key] = f"non-square kernel {tuple(shape[2:])}"
        elif shape[2] not in kernel_sizes:
            raw[key] = f"no head for {shape[2]}x{shape[3]} kernels (too few weights to pay for one)"
        elif key in raw_layers:
            raw[key] = "kept raw on request"
        elif shape[0] * shape[1] < min_kernels:
            raw[key] = f"fewer than {min_kernels} kernels"
        else:
            layers.append(LayerEntry(name=key, shape=tuple(shape), layer_index=len(layers)))  # type: ignore[arg-type]
    if not layers:
        raise CheckpointError(
            "no conv layer can be represented: the model has no square conv kernels with a predictor head "
            "(lower --min-kernels or check the architecture)"
        )
    used_sizes = tuple(sorted({entry.kernel_size for entry in layers}))
    return LayerPlan(layers=layers, kernel_sizes=used_sizes, raw_convs=raw)


def following_batchnorms(model: nn.Module) -> dict[str, str]:
    """Map each conv weight key to the key prefix of the BatchNorm that normalises its output, when one does.

    Found generically from module registration order: a BatchNorm2d registered right after a Conv2d, with as many
    features as the conv has output channels (conv1 -> bn1, downsample.0 -> downsample.1, features.N -> N+1).
    """
    pairs: dict[str, str] = {}
    previous: tuple[str, nn.Conv2d] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            previous = (name, module)
        elif isinstance(module, nn.BatchNorm2d):
            if previous is not None and module.num_features == previous[1].out_channels:
                pairs[f"{previous[0]}.weight"] = name
            previous = None
        elif len(list(module.children())) == 0 and not isinstance(module, (nn.ReLU, nn.Identity)):
            previous = None
    return pairs
