"""The predictor: an MLP from a kernel's positional embedding to the kernel's k*k weights.

Linear(emb -> h) + ReLU, ``depth`` x [Linear(h -> h) + ReLU], then one output head per represented kernel
size, Linear(h -> k*k). With one 3x3 head and depth 3 that is NeRN's predictor: 3h^2 + (emb + 13)h + 9
parameters. A separate head per kernel size (rather than cropping 3x3 out of a larger output) keeps a 1x1
kernel from paying for eight outputs it never uses.

Structured pruning (``pruning.py``) narrows each hidden layer by its own amount: ``widths`` then gives the
output width of each body layer, and ``hidden`` keeps the width the predictor was fitted with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .errors import UsageError


@dataclass(frozen=True)
class PredictorConfig:
    """Shape of the predictor MLP.

    Attributes:
        input_dim: width of the embedding (``EmbeddingConfig.dim``).
        hidden: width h of every hidden layer (``--hidden``); with ``widths`` set, the width it was fitted with.
        depth: number of hidden-to-hidden layers (NeRN: 3).
        kernel_sizes: one output head per kernel size k, producing k*k values.
        widths: output width of each of the ``depth + 1`` body layers, or None for ``hidden`` everywhere (set by
            structured pruning).
    """

    input_dim: int
    hidden: int = 180
    depth: int = 3
    kernel_sizes: tuple[int, ...] = field(default=(3,))
    widths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.depth < 0 or self.input_dim < 1:
            raise UsageError(f"invalid predictor shape: {self}")
        if not self.kernel_sizes or any(k < 1 for k in self.kernel_sizes):
            raise UsageError(f"kernel_sizes must be positive, got {self.kernel_sizes}")
        object.__setattr__(self, "kernel_sizes", tuple(sorted(set(int(k) for k in self.kernel_sizes))))
        if self.widths is not None:
            widths = tuple(int(w) for w in self.widths)
            if len(widths) != self.depth + 1 or any(w < 1 for w in widths):
                raise UsageError(f"widths must be {self.depth + 1} positive ints, got {self.widths}")
            object.__setattr__(self, "widths", widths)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """Output width of each body layer: ``widths``, or ``hidden`` repeated ``depth + 1`` times."""
        return self.widths if self.widths is not None else (self.hidden,) * (self.depth + 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.widths is None:
            del data["widths"]  # uniform predictors keep the metadata they had before widths existed
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PredictorConfig:
        widths = data.get("widths")
        return cls(
            input_dim=int(data["input_dim"]),
            hidden=int(data["hidden"]),
            depth=int(data["depth"]),
            kernel_sizes=tuple(int(k) for k in data["kernel_sizes"]),
            widths=None if widths is None else tuple(int(w) for w in widths),
        )


def head_name(kernel_size: int) -> str:
    return f"k{kernel_size}"


class Predictor(nn.Module):
    """MLP body shared by all kernel sizes plus one linear head per size."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width_in = config.input_dim
        for width in config.layer_widths:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({head_name(k): nn.Linear(width_in, k * k) for k in config.kernel_sizes})

    def features(self, embeddings: Tensor) -> Tensor:
        """Hidden features, float32 (N, last body width), shared by all heads."""
        return self.body(embeddings)

    def features_from_parts(self, first: Tensor, second: Tensor, first_rows: Tensor, second_rows: Tensor) -> Tensor:
        """``features(cat([first[first_rows], second[second_rows]], 1))`` up to float rounding, for embeddings made
        of two parts (``embeddings.part_tables``): the first Linear is applied to each table once, so a kernel
        costs the sum of two of its rows instead of a product with the whole embedding."""
        linear = self.body[0]
        split = first.shape[1]
        from_first = nn.functional.linear(first, linear.weight[:, :split], linear.bias)
        from_second = nn.functional.linear(second, linear.weight[:, split:])
        features = from_first[first_rows].add_(from_second[second_rows])
        for module in self.body[1:]:  # ReLUs in place: on millions of kernels their copies are a visible share
            features = features.relu_() if isinstance(module, nn.ReLU) else module(features)
        return features

    def head(self, features: Tensor, kernel_size: int) -> Tensor:
        """Kernels of one size from hidden features: float32 (N, k*k)."""
        return self.heads[head_name(kernel_size)](features)

    def forward(self, embeddings: Tensor, kernel_size: int) -> Tensor:
        """Predict kernels: embeddings float32 (N, input_dim) -> float32 (N, k*k)."""
        return self.head(self.features(embeddings), kernel_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def linear_layers(predictor: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of the predictor by module name (its weight is ``<name>.weight``), body first."""
    return {name: module for name, module in predictor.named_modules() if isinstance(module, nn.Linear)}


def build_predictor(config: PredictorConfig, *, seed: int | None = None) -> Predictor:
    """Build a predictor, with a reproducible initialisation when ``seed`` is given."""
    if seed is None:
        return Predictor(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Predictor(config)
