"""The settings of ``code_checkpoint``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from ..optim import PRECISIONS

CODE_CONFIG_VERSION = 2
ALLOCATIONS = ("sensitivity", "batchnorm", "uniform")
LR_SCHEDULES = ("cosine", "constant")
FINE_BITS = 12  # one-dimensional tensors: a grid of 2**-12 of their largest magnitude
DEFAULT_STEP = 0.02  # data-free coarseness c when none is given (weights of CIFAR ResNets: std about 0.05-0.1)



@dataclass
class CodeConfig:
    """How ``code_checkpoint`` codes a checkpoint.

    Attributes:
        step: the global coarseness ``c`` (weight units, for a layer of average sensitivity); None: searched for
            the target when there is one, else ``DEFAULT_STEP``.
        allocation: "sensitivity" scales each layer's step by its Fisher sensitivity on the training images
            (``batchnorm`` without them); "batchnorm" by a data-free estimate read off the BatchNorm that follows
            each conv (``batchnorm_sensitivity``); "uniform" gives every weight tensor the step ``c``.
        rate_weight: lambda of rate-distortion rounding, in squared steps per bit (0: plain rounding). On
            Laplacian data it saves bits only at rates below about 2 bits per value, and a coarser step does as
            well at equal squared error above that; fine-tuning chooses the rounding anyway.
        fold_batchnorm: store each BN after a conv as a scale and a bias only.
        search_steps: coarseness values tried without fine-tuning, geometric from ``search_from`` by ``growth``.
        search_from: the finest coarseness of the search.
        growth: factor between consecutive coarseness values (search and fine-tuning stages).
        stages: most fine-tuning stages (each at a coarser step than the last).
        stage_iters: fine-tuning steps per stage (0: no fine-tuning).
        lr_scale: learning rate of each weight tensor, as a share of its step per optimisation step (Adam).
        lr_schedule: "cosine" anneals the learning rate to zero over each stage, so that a stage ends with its
            values settled on one side of their rounding boundaries; "constant" keeps it.
        precision: auto | bf16 | fp32: bfloat16 autocast of the fine-tuning passes where the hardware has it (the
            held-out figures are always measured in float32, as the file will be expanded).
        rate_penalty: weight of a rate term in the fine-tuning loss: the mean magnitude of the weights in units of
            their steps, a proxy of their coded bits (a Laplacian's rate grows with it); 0: KL alone.
        hidden: width of a predictor offered to every conv layer (the hybrid codec, ``hybrid.py``): a layer takes
            it when its residual and positions code shorter than its plain integers; 0: the plain codec alone.
        fit_iters: reconstruction steps of that predictor.
        batch_size: images per fine-tuning step.
        mix: blending of the training images (see ``data.mix_batch``).
        sensitivity_batches: batches of the Fisher estimate.
        holdout: share of the training images held out to judge the target (never trained on).
        holdout_seed: seed of that split.
        seed: seeds every random choice.
    """

    step: float | None = None
    allocation: str = "sensitivity"
    rate_weight: float = 0.0
    fold_batchnorm: bool = True
    search_steps: int = 12
    search_from: float = 0.004
    growth: float = 1.25
    stages: int = 6
    stage_iters: int = 200
    lr_scale: float = 0.003
    lr_schedule: str = "cosine"
    rate_penalty: float = 0.0
    precision: str = "auto"
    hidden: int = 0
    fit_iters: int = 3000
    batch_size: int = 64
    mix: str = "mixup"
    sensitivity_batches: int = 4
    holdout: float = 0.1
    holdout_seed: int = 0
    seed: int = 0
    version: int = CODE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise UsageError(f"step must be > 0, got {self.step}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not self.rate_weight >= 0:
            raise UsageError(f"rate_weight must be >= 0, got {self.rate_weight}")
        if not self.growth > 1:
            raise UsageError(f"growth must be > 1, got {self.growth}")
        if self.search_steps < 1 or self.stages < 0 or self.stage_iters < 0 or self.batch_size < 1:
            raise UsageError("search_steps and batch_size must be >= 1, stages and stage_iters >= 0")
        if self.hidden < 0 or self.fit_iters < 1:
            raise UsageError(f"hidden must be >= 0 and fit_iters >= 1, got {self.hidden} and {self.fit_iters}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.search_from > 0 or not self.lr_scale > 0 or not self.rate_penalty >= 0:
            raise UsageError("search_from and lr_scale must be > 0, rate_penalty >= 0")
        if not 0.0 < self.holdout < 1.0:
            raise UsageError(f"holdout must be in (0, 1), got {self.holdout}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))
