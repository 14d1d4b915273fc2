"""Meta-compression: ``compress(nern, config)`` prunes or quantizes the predictor and fine-tunes the result.

``compress`` dispatches on the config's type (``QuantizeConfig`` or ``PruneConfig``), records the new state in
``Nern.compression``, fine-tunes the predictor through parametrizations that apply that state in every forward
pass (masks for pruned weights; fake quantization with a straight-through estimator for quantized ones), and
returns a new Nern whose predictor holds exactly the values its artifact stores, so evaluating it in memory and
after ``save_artifact``/``load_artifact`` gives the same numbers.

Which weights survive pruning is ``pruning.py``'s; which grid point each quantized weight takes (GPTQ or learned
rounding) is ``rounding.py``'s; the number formats themselves live in ``quantization.py``, and how the values are
stored in ``artifact``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._version import __version__
from .artifact import predictor_bytes
from .data import ImageData
from .devices import resolve_device
from .distillation import DistillConfig, train_with_teacher
from .errors import UsageError
from .models.registry import check_arch
from .nern import Nern, expand_model, expand_state_dict
from .optim import PRECISIONS
from .progress import StepCallback, offset
from .predictor import Predictor
from .predictor import linear_layers as _linears
from .pruning import achieved_sparsity, gradual_masks, magnitude_masks, remove_hidden_units, zero_masks
from .quantization import (
    BITS, FLOAT_DTYPES, STATE_VERSION, FakeFP16, FakeQuantize, FixedMask, round_fp16, round_weight,
)  # fmt: skip
from .reconstruction import IMPORTANCE, kernel_groups, reconstruction_error, train_reconstruction
from .rounding import gptq_round_, learned_round_, round_biases_
from .training import FitConfig

CONFIG_VERSION = 1
ROUNDINGS = ("gptq", "learned", "nearest")
PRUNE_METHODS = ("unstructured", "structured")
PRUNE_SCOPES = ("global", "layer")
PRUNE_SCHEDULES = ("oneshot", "gradual")
GRADUAL_UPDATES = 20  # mask updates over the ramp of a gradual schedule
PRUNE_LR = 1e-2  # a 50%-pruned predictor needs a refit at fit's rate: 1e-3 left ResNet-20 at 15.6% after 2,000 steps
KD_LR = 1e-5  # distill's measured ceiling: 2e-4 destroys a fitted predictor


@dataclass(kw_only=True)
class _FinetuneConfig:
    """Fine-tuning options shared by ``QuantizeConfig`` and ``PruneConfig``.

    Attributes:
        lr: peak Adam learning rate of the reconstruction phase (warmup 5%, cosine decay to lr / 100); None picks
            one that suits the stage (see ``recon_lr``).
        batch_size: kernels per reconstruction step.
        importance: how the reconstruction phase weighs kernel errors, as ``FitConfig.importance``.
        kd_iters: steps of a following knowledge-distillation phase (``train_with_teacher``; 0 = none).
        kd_lr: peak learning rate of the KD phase; None = the smaller of 1e-5 and the reconstruction default
            (distillation needs a small step, and a quantized predictor a step below its rounding step).
        kd_weight, recon_weight: loss weights of the KD phase (recon = reconstruction of the target weights).
        kd_batch_size: images per KD step.
        precision: auto | bf16 | fp32 autocast while fine-tuning. fp32 by default for quantization: bf16 matmuls
            round 8-bit weights by about a quarter of a quantization step; auto (bf16 where supported) for
            pruning, whose kept weights stay float.
        seed: seeds kernel sampling, batch order and augmentation.
    """

    lr: float | None = None
    batch_size: int = 4096
    importance: str = "uniform"
    kd_iters: int = 0
    kd_lr: float | None = None
    kd_weight: float = 1.0
    recon_weight: float = 1.0
    kd_batch_size: int = 128
    precision: str = "fp32"
    seed: int = 0
    version: int = CONFIG_VERSION

    def _check_finetune(self, iters: int, flag: str) -> None:
        if iters < 0 or self.kd_iters < 0:
            raise UsageError(f"{flag} and kd_iters must be >= 0, got {iters} and {self.kd_iters}")
        if not all(value is None or value > 0 for value in (self.lr, self.kd_lr)):
            raise UsageError(f"learning rates must be > 0, got lr={self.lr}, kd_lr={self.kd_lr}")
        if self.batch_size < 1 or self.kd_batch_size < 1:
            raise UsageError("batch sizes must be >= 1")
        if min(self.kd_weight, self.recon_weight) < 0 or self.kd_weight + self.recon_weight == 0:
            raise UsageError("kd_weight and recon_weight must be >= 0 and not both 0")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"unknown importance {self.importance!r}: choose one of {', '.join(IMPORTANCE)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.version != CONFIG_VERSION:
            raise UsageError(f"config version {self.version} is not supported (this reads {CONFIG_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def recon_lr(self) -> float:
        """The reconstruction phase's learning rate: ``lr``, or the stage's default when it is None."""
        return self.lr if self.lr is not None else self._default_lr()

    def distill_lr(self) -> float:
        """The KD phase's learning rate: ``kd_lr``, or the smaller of 1e-5 and the stage's default."""
        return self.kd_lr if self.kd_lr is not None else min(KD_LR, self._default_lr())

    def _default_lr(self) -> float:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _FinetuneConfig:
        """Rebuild a config from ``to_dict`` output (e.g. a history record). Raises UsageError on unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown {cls.__name__} option {unknown[0]!r}")
        return cls(**data)


@dataclass(kw_only=True)
class QuantizeConfig(_FinetuneConfig):
    """Quantize the predictor's Linear weights, learned with quantization-aware fine-tuning.

    Attributes:
        bits: 2..8 (symmetric integers, one float16 scale per output row or group) or "fp16" (``--bits``).
        group_size: inputs sharing one scale (``--group-size``); None = one scale per output row.
        bias_dtype: "float16" (default: costs nothing measurable) or "float32".
        raw_fp16: also store the raw (non-represented) float32 tensors as float16 (``--raw-fp16``).
        rounding: "gptq" (default) rounds each layer with error compensation (``gptq_weight``) on the kernels'
            own embeddings, before fine-tuning; "learned" chooses up or down for every weight by optimising all
            layers together for the regenerated kernels (``rounding.learned_round_``, ``rounding_iters`` steps;
            lower error than GPTQ at 6 and 8 bits, higher at 4; follow it with KD);
            "nearest" rounds every weight to its nearest level.
        rounding_iters: steps of learned rounding (``--rounding-iters``).
        qat_iters: reconstruction steps with fake-quantized weights before the final rounding (``--qat-iters``;
            0 = no fine-tuning). The default learning rate shrinks with the quantization step: 3e-6 at 8 bits,
            x2 per bit less; larger steps move the float weights further than the rounding does.

    Example:
        >>> small = compress(nern, QuantizeConfig(bits=4, group_size=32, qat_iters=2000))
    """

    bits: int | str = 8
    group_size: int | None = None
    bias_dtype: str = "float16"
    raw_fp16: bool = False
    rounding: str = "gptq"
    rounding_iters: int = 3000
    qat_iters: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.bits, str) and self.bits.isdigit():
            self.bits = int(self.bits)
        if self.bits not in BITS or isinstance(self.bits, bool):
            raise UsageError(f"bits must be one of {', '.join(map(str, BITS))}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or int(self.group_size) < 1):
            raise UsageError(f"group_size must be >= 1, got {self.group_size}")
        if self.group_size is not None and self.bits == "fp16":
            raise UsageError("group_size applies to integer bits, not fp16")
        if self.bias_dtype not in FLOAT_DTYPES:
            raise UsageError(f"bias_dtype must be float16 or float32, got {self.bias_dtype!r}")
        if self.rounding not in ROUNDINGS:
            raise UsageError(f"unknown rounding {self.rounding!r}: choose one of {', '.join(ROUNDINGS)}")
        self._check_finetune(self.qat_iters, "qat_iters")
        if isinstance(self.rounding_iters, bool) or int(self.rounding_iters) < 1:
            raise UsageError(f"rounding_iters must be >= 1, got {self.rounding_iters}")

    def _default_lr(self) -> float:
        return 1e-6 if self.bits == "fp16" else 3e-6 * 2.0 ** (8 - int(self.bits))

    def learned_rounding_steps(self) -> int:
        """Steps of learned rounding this config runs: ``rounding_iters``, or 0 (other rounding, or fp16)."""
        return self.rounding_iters if self.rounding == "learned" and self.bits != "fp16" else 0

    def state(self) -> dict[str, Any]:
        """The ``quantize`` entry of the compression state."""
        return {
            "bits": self.bits,
            "group_size": None if self.group_size is None else int(self.group_size),
            "scale_dtype": "float16",
            "bias_dtype": "float16" if self.bits == "fp16" else self.bias_dtype,
        }


@dataclass(kw_only=True)
class PruneConfig(_FinetuneConfig):
    """Prune the predictor by magnitude, then optionally fine-tune it with the pruned weights held at zero.

    Attributes:
        method: "unstructured" (single weights, stored sparse) or "structured" (whole hidden units removed,
            giving a smaller dense MLP).
        sparsity: share of weights (unstructured) or hidden units (structured) removed, in [0, 1) (``--sparsity``).
        scope: "global" ranks across all layers, "layer" removes the same share from every layer.
        finetune_iters: reconstruction steps after pruning (``--finetune-iters``; 0 = none).
        schedule: "oneshot" prunes everything before fine-tuning; "gradual" (unstructured only) raises the
            sparsity along Zhu & Gupta's cubic ramp s_t = s (1 - (1 - t / T)^3) over the first ``ramp`` of the
            reconstruction steps, re-ranking the surviving weights at each of ``GRADUAL_UPDATES`` updates, so
            the predictor adapts while it loses weights (``--schedule``).
        ramp: share of ``finetune_iters`` over which a gradual schedule reaches ``sparsity``.
        reassign_every: reconstruction steps between re-assignments of kernels to the positions the pruned
            predictor fits best (``FitConfig.reassign_every``; crossfilter only; 0 = keep the input's positions).
            Moved positions cost no bytes: they replace the stored permutation (``--reassign-every``). At 50%,
            4,000 steps, the refit error fell by a tenth (ResNet-20) to a fifth (ResNet-56).

    Example:
        >>> pruned = compress(nern, PruneConfig(sparsity=0.5, finetune_iters=1000))
    """

    method: str = "unstructured"
    sparsity: float = 0.5
    scope: str = "global"
    finetune_iters: int = 1000
    schedule: str = "oneshot"
    ramp: float = 0.5
    reassign_every: int = 500
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UsageError(f"unknown pruning method {self.method!r}: choose one of {', '.join(PRUNE_METHODS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in PRUNE_SCOPES:
            raise UsageError(f"unknown scope {self.scope!r}: choose one of {', '.join(PRUNE_SCOPES)}")
        if self.schedule not in PRUNE_SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(PRUNE_SCHEDULES)}")
        if self.schedule == "gradual" and (self.method != "unstructured" or self.finetune_iters < 1):
            raise UsageError("schedule gradual needs unstructured pruning and finetune_iters >= 1")
        if not 0.0 < self.ramp <= 1.0:
            raise UsageError(f"ramp must be in (0, 1], got {self.ramp}")
        self._check_finetune(self.finetune_iters, "finetune_iters")
        if isinstance(self.reassign_every, bool) or int(self.reassign_every) < 0:
            raise UsageError(f"reassign_every must be >= 0, got {self.reassign_every}")

    def _default_lr(self) -> float:
        return PRUNE_LR

    def sparsity_at(self, step: int) -> float:
        """The sparsity the masks hold from reconstruction step ``step`` on (constant when one-shot)."""
        if self.schedule == "oneshot":
            return self.sparsity
        ramp_steps = max(1, round(self.ramp * self.finetune_iters))
        every = max(1, ramp_steps // GRADUAL_UPDATES)
        progress = min(1.0, (step // every + 1) * every / ramp_steps)
        return self.sparsity * (1.0 - (1.0 - progress) ** 3)


# ------------------------------------------------------------------------------------------------- compress


def compress(
    nern: Nern,
    config: QuantizeConfig | PruneConfig,
    *,
    target_weights: dict[str, Tensor] | None = None,
    data: ImageData | None = None,
    teacher: nn.Module | None = None,
    device: str = "auto",
    on_step: StepCallback | None = None,
) -> Nern:
    """Prune or quantize the predictor of ``nern`` (which is left unchanged) and fine-tune the result.

    Stages compose in any order (prune then quantize gives sparse quantized weights); the existing state is kept
    fixed while the new one is learned.

    Args:
        nern: the representation to compress.
        config: ``QuantizeConfig`` or ``PruneConfig``.
        target_weights: conv weights to reconstruct, keyed like ``nern.layers`` (e.g. the original checkpoint);
            None = the weights ``nern`` regenerates before compression, so a .nern alone suffices.
        data: images for the KD phase (None = uniform noise, data-free); used only when ``config.kd_iters > 0``.
        teacher: KD teacher; None = the network ``nern`` regenerates before compression.
        device: auto | cpu | cuda[:N].
        on_step: progress callback ``(step, total, metrics)`` over both fine-tuning phases.

    Returns:
        A new Nern whose predictor holds exactly the values its artifact stores, whose ``compression`` describes
        the state, and whose history ends with a "quantize" or "prune" record (config, reconstruction error
        ``before``, ``naive`` (compressed, not fine-tuned) and after, predictor bytes before and after).

    Raises:
        UsageError: an unknown config type, target weights that do not match the represented layers, or an
            a user builder read from an untrusted file that the KD phase would have to build.

    Example:
        >>> nern = compress(compress(nern, PruneConfig(sparsity=0.5)), QuantizeConfig(bits=8))
    """
    if not isinstance(config, (QuantizeConfig, PruneConfig)):
        raise UsageError(f"compress takes a QuantizeConfig or PruneConfig, got {type(config).__name__}")
    if config.kd_iters or config.importance == "bn":  # the only uses of the architecture: refuse before any work
        check_arch(nern.arch)
    torch_device = resolve_device(device)
    if target_weights is None:
        targets = expand_state_dict(nern, device="cpu")
    else:
        targets = _check_targets(nern, target_weights)
    if config.kd_iters and teacher is None:
        teacher = expand_model(nern, device="cpu")
    result = _copy(nern)
    before = reconstruction_error(result, targets)
    bytes_before = predictor_bytes(result.predictor, result.compression)
    dense = None  # the unpruned predictor, kept when a gradual schedule starts from it
    if isinstance(config, QuantizeConfig):
        stage, iters, details = "quantize", config.qat_iters, _apply_quantization(result, config)
    else:
        if config.schedule == "gradual":
            dense = copy.deepcopy(result.predictor)
        stage, iters, details = "prune", config.finetune_iters, _apply_pruning(result, config)
    masks = zero_masks(result.predictor) if "prune" in result.compression else None
    rounded = copy.deepcopy(result.predictor)
    _project_(rounded, result.compression, masks)
    errors = {"naive": _rounded(reconstruction_error(dataclasses.replace(result, predictor=rounded), targets))}
    before_step = None
    if dense is not None:
        # "naive" above is the one-shot result; the gradual schedule starts again from the dense weights.
        result.predictor, before_step = dense, gradual_masks(dense, config.sparsity_at, config.scope, masks)
    finetune = bool(iters or config.kd_iters)
    metrics: dict[str, Any] = {}
    if isinstance(config, QuantizeConfig) and config.rounding == "gptq" and config.bits != "fp16":
        gptq_round_(result, masks, seed=config.seed)
        errors["gptq"] = _rounded(reconstruction_error(result, targets))
    elif isinstance(config, QuantizeConfig) and config.learned_rounding_steps():
        total = config.rounding_iters + iters + config.kd_iters  # one progress count over all phases
        metrics.update(_round_learned_(result, config, masks, targets, torch_device, offset(on_step, 0, total)))
        errors["learned"] = _rounded(reconstruction_error(result, targets))
        on_step = offset(on_step, config.rounding_iters)
    elif not finetune:
        result.predictor = rounded
    if finetune:
        # Fine-tuning starts from the float (or rounded) weights; parametrizations round them in every pass.
        metrics.update(
            _finetune(result, config, iters, masks, targets, data, teacher, torch_device, on_step, before_step)
        )
        _project_(result.predictor, result.compression, masks)
    if before_step is not None:
        details["achieved_sparsity"] = achieved_sparsity(masks)
    result.compression = {key: value for key, value in result.compression.items() if key != "layout"}
    after = reconstruction_error(result, targets)
    result.history.append(
        {
            "stage": stage,
            "tool_version": __version__,
            "config": config.to_dict(),
            "device": torch_device.type,
            "targets": "given" if target_weights is not None else "self",
            "data": None if not config.kd_iters else ("noise" if data is None else data.source),
            "steps": iters + config.kd_iters,
            "lr": config.recon_lr(),
            "kd_lr": config.distill_lr() if config.kd_iters else None,
            **details,
            **metrics,
            "before": _rounded(before),
            **errors,
            **_rounded(after),
            "predictor_bytes_before": bytes_before,
            "predictor_bytes_after": predictor_bytes(result.predictor, result.compression),
        }
    )
    return result


def _rounded(errors: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 6) for key, value in errors.items()}


def _copy(nern: Nern) -> Nern:
    return dataclasses.replace(
        nern,
        predictor=copy.deepcopy(nern.predictor).cpu(),
        positions=dict(nern.positions),  # a pruning refit may re-assign them
        raw=dict(nern.raw),
        history=copy.deepcopy(nern.history),
        compression=copy.deepcopy(nern.compression),
    )


def _check_targets(nern: Nern, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    for entry in nern.layers:
        if entry.name not in weights:
            raise UsageError(f"target weights lack the represented layer {entry.name!r}")
        if tuple(weights[entry.name].shape) != entry.shape:
            raise UsageError(
                f"target weight {entry.name!r} has shape {tuple(weights[entry.name].shape)}, expected {entry.shape}"
            )
    return weights


@torch.no_grad()
def _project_(predictor: nn.Module, state: dict[str, Any], masks: dict[str, Tensor] | None) -> None:
    """Set the predictor's parameters to the values the state stores: masked, then rounded."""
    spec = state.get("quantize")
    for name, module in _linears(predictor).items():
        weight = module.weight.detach().cpu()
        if masks is not None:
            weight = weight * masks[name]
        if spec is not None:
            if spec["bits"] == "fp16":
                weight = round_fp16(weight)
            else:
                weight = round_weight(weight, spec["bits"], spec["group_size"])
        module.weight.copy_(weight)
        if spec is not None and spec["bias_dtype"] == "float16":
            module.bias.copy_(round_fp16(module.bias))


def _round_learned_(
    nern: Nern,
    config: QuantizeConfig,
    masks: dict[str, Tensor] | None,
    targets: dict[str, Tensor],
    device: torch.device,
    on_step: StepCallback | None,
) -> dict[str, float]:
    """Learned rounding (``rounding.py``) of every Linear weight, after rounding the biases as stored."""
    spec = nern.compression["quantize"]
    round_biases_(nern)
    groups = kernel_groups(nern, targets, device, config.importance)
    metrics = learned_round_(
        nern, groups, bits=int(spec["bits"]), group_size=spec["group_size"], masks=masks, iters=config.rounding_iters,
        batch_size=config.batch_size, seed=config.seed, on_step=on_step,
    )  # fmt: skip
    _project_(nern.predictor, nern.compression, masks)  # already on the grid: this only pins the stored values
    return metrics


def _apply_quantization(nern: Nern, config: QuantizeConfig) -> dict[str, Any]:
    nern.compression = {**nern.compression, "version": STATE_VERSION, "quantize": config.state()}
    if config.raw_fp16:
        nern.compression["raw_fp16"] = True
        nern.raw = {key: _raw_fp16(key, value) for key, value in nern.raw.items()}
    return {}


def _raw_fp16(key: str, value: Tensor) -> Tensor:
    if value.dtype != torch.float32:
        return value
    if value.numel() and float(value.abs().max()) > 65504.0:
        raise UsageError(f"raw tensor {key!r} holds values beyond the float16 range: drop raw_fp16")
    return round_fp16(value)


def _apply_pruning(nern: Nern, config: PruneConfig) -> dict[str, Any]:
    if config.method == "structured":
        widths_before = list(nern.predictor.config.layer_widths)
        nern.predictor = remove_hidden_units(nern.predictor, config.sparsity, config.scope)
        record = {"sparsity": config.sparsity, "scope": config.scope, "widths_before": widths_before}
        nern.compression = {**nern.compression, "version": STATE_VERSION, "structured": record}
        return {"widths_before": widths_before, "widths_after": list(nern.predictor.config.layer_widths)}
    masks = magnitude_masks(nern.predictor, config.sparsity, config.scope)
    with torch.no_grad():
        for name, module in _linears(nern.predictor).items():
            module.weight.mul_(masks[name])
    nern.compression = {
        **nern.compression, "version": STATE_VERSION, "prune": {"sparsity": config.sparsity, "scope": config.scope}
    }
    return {"achieved_sparsity": achieved_sparsity(masks)}


def _finetune(
    nern: Nern,
    config: QuantizeConfig | PruneConfig,
    recon_iters: int,
    masks: dict[str, Tensor] | None,
    targets: dict[str, Tensor],
    data: ImageData | None,
    teacher: nn.Module | None,
    device: torch.device,
    on_step: StepCallback | None,
    before_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train the predictor through parametrizations that apply the compression state, then remove them.
    ``before_step(step)`` runs before each reconstruction step (a gradual pruning schedule's mask updates)."""
    total = recon_iters + config.kd_iters
    metrics: dict[str, Any] = {}
    _parametrize_(nern.predictor, nern.compression, masks)
    try:
        if recon_iters:
            # A pruning refit may re-assign positions to what the smaller predictor fits best; quantization keeps
            # the positions the predictor was fitted with (re-assignment was measured for fit and prune only).
            reassign_every = config.reassign_every if isinstance(config, PruneConfig) else 0
            fit_config = FitConfig(
                iters=recon_iters, lr=config.recon_lr(), final_lr_ratio=0.01, batch_size=config.batch_size,
                importance=config.importance, precision=config.precision, seed=config.seed,
                reassign_every=reassign_every,
            )  # fmt: skip
            nern.predictor.to(device)
            result = train_reconstruction(
                nern, targets, fit_config, device=device, on_step=offset(on_step, 0, total), before_step=before_step
            )
            metrics["recon_final_loss"] = result["final_loss"]
        if config.kd_iters:
            distill_config = DistillConfig(
                iters=config.kd_iters, lr=config.distill_lr(), batch_size=config.kd_batch_size, kd_weight=config.kd_weight,
                recon_weight=config.recon_weight, precision=config.precision, seed=config.seed,
            )  # fmt: skip
            result = train_with_teacher(
                nern, teacher, data, distill_config, device=device, target_weights=targets,
                on_step=offset(on_step, recon_iters, total),
            )  # fmt: skip
            metrics.update({f"kd_{key}": value for key, value in result.items()})
    finally:
        for module in _linears(nern.predictor).values():
            for tensor_name in list(getattr(module, "parametrizations", {})):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        # Removing a parametrization re-registers the parameter last; a fresh module keeps the canonical order.
        trained = nern.predictor.cpu().state_dict()
        nern.predictor = Predictor(nern.predictor.config).eval()
        nern.predictor.load_state_dict(trained)
    return metrics


def _parametrize_(predictor: nn.Module, state: dict[str, Any], masks: dict[str, Tensor] | None) -> None:
    spec = state.get("quantize")
    for name, module in _linears(predictor).items():
        if masks is not None:
            parametrize.register_parametrization(module, "weight", FixedMask(masks[name]))
        if spec is not None:
            if spec["bits"] == "fp16":
                parametrize.register_parametrization(module, "weight", FakeFP16())
            else:
                parametrize.register_parametrization(module, "weight", FakeQuantize(spec["bits"], spec["group_size"]))
            if spec["bias_dtype"] == "float16":
                parametrize.register_parametrization(module, "bias", FakeFP16())
