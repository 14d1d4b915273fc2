"""Coding a checkpoint: every weight as integers on a uniform grid, entropy-coded, with the steps chosen by rate
and distortion and, given training images, the integers fine-tuned so that the network keeps its function.

The recipe, in the order ``code_checkpoint`` runs it:

1. **BatchNorm simplified.** Each BN following a conv becomes a per-channel scale and bias (mean 0, variance
   1 - eps): the same function in eval mode with half the parameters to store.
2. **Steps.** Weight tensor ``l`` (every float tensor of two or more dimensions: convs, linears) gets the step
   ``Delta_l = c / sqrt(s_l / s_mean)``: one global coarseness ``c``, and each layer's sensitivity ``s_l`` (the
   mean squared gradient of the network's loss against the original's answers on training images, a Fisher
   estimate). For equal rate, distortion then falls where the network is most sensitive to it: high-resolution
   rate-distortion theory puts the optimum where ``Delta_l^2 * s_l`` is the same for all layers. Without images
   every ``s_l`` is 1. One-dimensional tensors (BN scales and biases, linear biases) are kept almost exactly, on a
   grid of 2**-12 of their largest magnitude.
3. **Rounding by rate and distortion** (``codes.rate_distortion_round``): values near a rounding boundary move
   to the grid point that codes shorter.
4. **Fine-tuning of what is stored** (with images): the weights train through straight-through rounding against
   the original network's outputs (KL, as ``distill``), so that the *function* is kept rather than the weights.
5. **Search** (with a target): starting from the coarsest step that meets the target without fine-tuning, the
   step grows stage by stage (``growth``), each stage fine-tuning from the last, and the smallest file that meets
   the target on the held-out training images is kept. Test images never steer anything.

The result is a Nern without predictor: every weight coded, the rest raw (``artifact`` entropy-codes both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._version import __version__
from .artifact import v2 as format2
from .codes import QuantizedTensor, nearest, rate_distortion_round
from .data import ImageData, draw_batch, preset_stats, split_holdout, to_float
from .devices import resolve_device
from .embeddings import EmbeddingConfig
from .errors import UsageError
from .gate import AccuracyGate
from .errors import Interrupted
from .hybrid import Choice, choose, offer_predictor, restore_offer, with_predictor
from .layers import following_batchnorms
from .losses import kd_loss
from .models import ArchSpec, build_model, resolve_arch
from .nern import Nern
from .optim import PRECISIONS, use_bf16
from .progress import Reporter, silent
from .resume import read_stage_snapshot, write_stage_snapshot
from .safetensors_io import safetensors_header

CODE_CONFIG_VERSION = 1
ALLOCATIONS = ("sensitivity", "batchnorm", "uniform")
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


# ------------------------------------------------------------------------------------------ the network's tensors
def simplify_batchnorms(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every BatchNorm that follows a conv as a per-channel scale and bias: weight = gamma / sqrt(var + eps),
    bias = beta - mean * weight, running mean 0, running variance 1 - eps. The same function in eval mode."""
    modules = dict(model.named_modules())
    simplified = dict(state_dict)
    for bn_name in following_batchnorms(model).values():
        keys = [f"{bn_name}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
        if not all(key in state_dict for key in keys):
            continue
        gamma, beta, mean, var = (state_dict[key].double() for key in keys)
        scale = gamma / torch.sqrt(var + modules[bn_name].eps)
        dtype = state_dict[keys[0]].dtype
        simplified[keys[0]] = scale.to(dtype)
        simplified[keys[1]] = (beta - mean * scale).to(dtype)
        simplified[keys[2]] = torch.zeros_like(state_dict[keys[2]])
        simplified[keys[3]] = torch.full_like(state_dict[keys[3]], 1.0 - modules[bn_name].eps)
    return simplified


def coded_keys(state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """(weight tensors coded at the global coarseness, one-dimensional tensors coded finely). Constant tensors
    and integer buffers stay raw: their entropy-coded bytes are a handful anyway."""
    weights, fine = [], []
    for key, value in state_dict.items():
        if not value.is_floating_point() or value.numel() < 2 or bool((value == value.reshape(-1)[0]).all()):
            continue
        (weights if value.dim() >= 2 else fine).append(key)
    return weights, fine


def fine_step(value: Tensor) -> float:
    """The step of a one-dimensional tensor: 2**-12 of its largest magnitude."""
    return max(float(value.abs().max()), 1e-12) * 2.0**-FINE_BITS


# ---------------------------------------------------------------------------------------------------- sensitivity
def layer_sensitivity(
    model: nn.Module, weights: list[str], data: ImageData, *, preset: str, batches: int, batch_size: int, seed: int
) -> dict[str, float]:
    """Mean squared gradient per weight of each tensor (an empirical Fisher estimate): the cross-entropy of the
    network against its own answers, on training images normalised with ``preset``.

    Returns:
        key -> mean of g**2 over the tensor's values and the batches.
    """
    spec_mean, spec_std = preset_stats(preset)
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    totals = {key: 0.0 for key in weights}
    model.eval()
    for _ in range(batches):
        x = draw_batch(data, batch_size, mean=spec_mean, std=spec_std, shape=(0, 0, 0), generator=generator,
                       augment=True, mix="none")  # fmt: skip
        model.zero_grad(set_to_none=True)
        logits = model(x)
        nn.functional.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum").backward()
        for key in weights:
            grad = parameters[key].grad
            totals[key] += 0.0 if grad is None else float(grad.pow(2).mean())
    model.zero_grad(set_to_none=True)
    return {key: total / batches for key, total in totals.items()}


def batchnorm_sensitivity(model: nn.Module, state_dict: dict[str, Tensor], weights: list[str]) -> dict[str, float]:
    """A data-free sensitivity of each conv: how much a unit error in one of its weights moves the normalised
    output of the BatchNorm after it, read off that BatchNorm.

    A conv's output has variance ``var ~ fan_in * E[w^2] * E[x^2]`` (weights and inputs independent), so its
    inputs' energy is ``E[x^2] ~ var / (fan_in * E[w^2])``; the BN multiplies errors by ``gamma / sqrt(var + eps)``.
    Per weight, the sensitivity of the normalised output is ``E[x^2] * gamma^2 / (var + eps)``, averaged over the
    output channels. Tensors without a BatchNorm after them get the median of the others.

    Returns:
        key -> sensitivity, for ``layer_steps``.
    """
    modules = dict(model.named_modules())
    found: dict[str, float] = {}
    for conv_key, bn_name in following_batchnorms(model).items():
        keys = [f"{bn_name}.{name}" for name in ("weight", "running_var")]
        if conv_key not in weights or not all(key in state_dict for key in keys):
            continue
        weight = state_dict[conv_key].double()
        gamma, var = state_dict[keys[0]].double(), state_dict[keys[1]].double()
        fan_in = weight[0].numel()
        energy = weight.flatten(1).pow(2).mean(1).clamp_min(1e-12)
        inputs = var / (fan_in * energy)
        found[conv_key] = float((inputs * gamma.pow(2) / (var + modules[bn_name].eps)).mean())
    middle = float(torch.tensor(sorted(found.values())).median()) if found else 1.0
    return {key: found.get(key, middle) for key in weights}


def layer_steps(coarseness: float, weights: list[str], sensitivity: dict[str, float] | None, sizes: dict[str, int]):
    """Step of each weight tensor: ``c / sqrt(s_l / s_mean)`` (``s_mean`` weighted by tensor size), or ``c``."""
    if sensitivity is None:
        return {key: coarseness for key in weights}
    floor = 1e-12
    total = sum(sizes[key] for key in weights)
    mean = sum(max(sensitivity[key], floor) * sizes[key] for key in weights) / total
    return {key: coarseness / math.sqrt(max(sensitivity[key], floor) / mean) for key in weights}


# ------------------------------------------------------------------------------------------------------- resume
class Stages:
    """Where a search saves its state after each stage, and how it learns that a signal asked it to stop.

    Args:
        path: the resume file (``<output>.resume``).
        fingerprint: what a resumed run must match (config, inputs).
        resume: continue from ``path``.
        log: one line per save or resume.
    """

    def __init__(self, path, fingerprint: dict[str, Any], *, resume: bool = False, log=None) -> None:
        self.path, self.fingerprint, self.resume = path, fingerprint, resume
        self.log = log or (lambda message: None)
        self.signal: str | None = None

    def load(self) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        return read_stage_snapshot(self.path, self.fingerprint) if self.resume else None

    def save(self, document: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        write_stage_snapshot(self.path, self.fingerprint, document, tensors)

    def stop_requested(self) -> str | None:
        return self.signal

    def discard(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    @contextlib.contextmanager
    def signals(self):
        """SIGINT and SIGTERM set a flag the fine-tuning loop checks after each step (a second one stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.signal:
                raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopped")
            self.signal = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------------- one state
@dataclass
class Candidate:
    """One coded version of the network: its steps, codes, size and measured fidelity."""

    coarseness: float
    codes: dict[str, QuantizedTensor] | None
    bytes: int
    agreement: float | None = None
    top1: float | None = None
    finetuned_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def quantize_state(
    state: dict[str, Tensor], steps: dict[str, float], fine: list[str], rate_weight: float
) -> dict[str, QuantizedTensor]:
    """Codes of every coded tensor: weights by rate-distortion rounding at their step, 1-D tensors finely."""
    codes = {key: rate_distortion_round(state[key], step, rate_weight=rate_weight) for key, step in steps.items()}
    codes.update({key: nearest(state[key], fine_step(state[key])) for key in fine})
    return codes


def dequantized(state: dict[str, Tensor], codes: dict[str, QuantizedTensor]) -> dict[str, Tensor]:
    return {**state, **{key: code.dequantize().to(state[key].dtype) for key, code in codes.items()}}


# ----------------------------------------------------------------------------------------------- fine-tuning
def finetune(
    student: nn.Module,
    teacher: nn.Module,
    latents: dict[str, Tensor],
    steps: dict[str, float],
    data: ImageData | None,
    config: CodeConfig,
    *,
    spec: ArchSpec,
    iters: int,
    generator: torch.Generator,
    device: torch.device,
    offsets: dict[str, Tensor] | None = None,
    on_step=None,
    stop: Callable[[], str | None] | None = None,
) -> float:
    """Train ``latents`` (key -> float tensor, replaced by the trained values) through straight-through rounding to
    ``steps``, so that ``student`` called with the rounded tensors matches ``teacher``'s outputs (KL) on ``data``
    (noise when None). A tensor with an offset (a predictor's output) is rounded on the grid shifted by it, as its
    residual is stored. ``stop()``, checked after every step, names a signal that ends the run (``Interrupted``).
    Returns the last loss.

    Each tensor's learning rate is ``lr_scale`` of its step: a weight crosses a rounding boundary in about
    ``0.5 / lr_scale`` consistent steps, whatever its layer's scale.
    """
    parameters = {key: value.detach().clone().to(device).requires_grad_(True) for key, value in latents.items()}
    optimizer = torch.optim.Adam([{"params": [value], "lr": config.lr_scale * steps[key]}
                                  for key, value in parameters.items()])  # fmt: skip
    mean, std = preset_stats(spec.preset)
    student, teacher = student.to(device), teacher.to(device)
    shifts = {key: value.to(device) for key, value in (offsets or {}).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config.precision, device))
    penalised = [key for key, value in parameters.items() if value.dim() >= 2]
    penalised_count = max(1, sum(parameters[key].numel() for key in penalised))
    loss = torch.zeros(())
    for step in range(iters):
        x = draw_batch(data, config.batch_size, mean=mean, std=std, shape=spec.input_shape, generator=generator,
                       mix=config.mix).to(device)  # fmt: skip
        with torch.no_grad(), autocast:
            target = teacher(x).float()
        rounded = {key: value + (_on_grid(value, steps[key], shifts.get(key)) - value).detach()
                   for key, value in parameters.items()}  # fmt: skip
        with autocast:
            logits = functional_call(student, rounded, (x,), strict=False)
        loss = kd_loss(logits.float(), target)
        if config.rate_penalty:
            magnitude = sum(((parameters[key] - shifts.get(key, 0.0)).abs() / steps[key]).sum()
                            for key in penalised) / penalised_count  # fmt: skip
            loss = loss + config.rate_penalty * magnitude
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None and (step % 10 == 0 or step == iters - 1):
            on_step(step + 1, iters, {"loss": float(loss.detach())})
        if stop is not None and stop():
            raise Interrupted(f"interrupted by {stop()} during fine-tuning{_resume_hint(stop)}")
    for key, value in parameters.items():
        latents[key] = value.detach().cpu()
    student.cpu(), teacher.cpu()
    return float(loss.detach())


def _on_grid(value: Tensor, step: float, offset: Tensor | None) -> Tensor:
    if offset is None:
        return torch.round(value / step) * step
    return offset + torch.round((value - offset) / step) * step


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, state: dict[str, Tensor] | None = None) -> Tensor:
    """Predicted classes of ``model`` (holding ``state`` instead of its own tensors, when given) on ``x``."""
    call = (lambda batch: model(batch)) if state is None else (
        lambda batch: functional_call(model, state, (batch,), strict=False))  # fmt: skip
    return torch.cat([call(x[start : start + 250]).argmax(1) for start in range(0, x.shape[0], 250)])


@dataclass
class _Holdout:
    """The held-out training images, their labels and the original network's answers on them."""

    x: Tensor
    labels: Tensor
    reference: Tensor

    @property
    def reference_top1(self) -> float:
        return 100.0 * float((self.reference == self.labels).float().mean())

    def figures(self, student: nn.Module, state: dict[str, Tensor]) -> tuple[float, float]:
        """(agreement with the original, top-1) of ``student`` holding ``state``."""
        predicted = predictions(student, self.x, state)
        return (100.0 * float((predicted == self.reference).float().mean()),
                100.0 * float((predicted == self.labels).float().mean()))  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the job
def code_checkpoint(
    state_dict: dict[str, Tensor],
    config: CodeConfig | None = None,
    *,
    arch: str | ArchSpec | None = None,
    data: ImageData | None = None,
    target: AccuracyGate | None = None,
    device: str = "auto",
    reporter: Reporter = silent,
    source: dict | None = None,
    on_candidate: Callable[[Nern, dict[str, Any]], None] | None = None,
    resume: Stages | None = None,
) -> tuple[Nern, dict[str, Any]]:
    """Code a checkpoint (see the module docstring): the plain codec, with data-driven fine-tuning when there is
    data.

    Args:
        state_dict: the checkpoint's tensors (see ``load_checkpoint``).
        config: the recipe (default ``CodeConfig()``).
        arch: architecture name or spec; None detects it.
        data: training images; None is the data-free path (no sensitivity, no fine-tuning, no search).
        target: the fidelity to reach on the held-out part of ``data``; the smallest candidate meeting it is kept
            (the closest one when none does). Needs ``data``.
        device: auto | cpu | cuda[:N].
        reporter: progress of each phase and one log line per candidate.
        source: provenance recorded in the Nern.
        on_candidate: called with every candidate's Nern and its description as the search makes it (to keep
            the whole rate-fidelity curve, e.g. in a benchmark).
        resume: where the search saves its state after each stage and, with ``resume.resume``, continues from;
            SIGINT/SIGTERM stop it within a fine-tuning step (``Interrupted``), the last stage kept.

    Returns:
        ``(nern, record)``: the coded Nern (its history ends with a "code" record) and that record: the config,
        every candidate (coarseness, bytes, agreement and top-1 on the held-out images, fine-tuned steps), the
        chosen one, and whether the target was met.

    Raises:
        UsageError: a target without data.
    """
    config = config or CodeConfig()
    if target is not None and data is None:
        raise UsageError("a fidelity target is judged on held-out training images: give data")
    started = time.perf_counter()
    spec = arch if isinstance(arch, ArchSpec) else resolve_arch(arch, state_dict)
    job = _Coding(spec, state_dict, config, data, resolve_device(device), reporter, source, on_candidate, resume)
    if data is None or (target is None and not config.stage_iters):
        candidates = [job.candidate(config.step or DEFAULT_STEP, job.base)]
    elif target is None:  # a given step, fine-tuned once
        candidates = [job.finetuned(config.step or DEFAULT_STEP, job.initial_latents(), stage=1)]
    else:
        candidates = job.search(target)
    chosen, met = _choose(candidates, target)
    nern = _with_codes(chosen.extra["template"], chosen.codes)
    record = {
        "stage": "code",
        "tool_version": __version__,
        "config": config.to_dict(),
        "device": job.device.type,
        "data": None if job.data is None else job.data.source,
        "target": None if target is None else {"min_agreement": target.min_agreement, "max_drop": target.max_drop},
        "target_met": met,
        "candidates": [_describe(found) for found in candidates],
        "chosen": _describe(chosen),
        "hybrid": chosen.extra.get("hybrid"),
        "holdout_reference_top1": None if job.holdout is None else job.holdout.reference_top1,
    }
    nern.history.append(record)  # nothing time-dependent in the file: same inputs, same bytes
    return nern, {**record, "seconds": round(time.perf_counter() - started, 1)}


class _Coding:
    """What every candidate of one ``code_checkpoint`` run shares: the networks, the tensors, the held-out
    images, the sensitivities."""

    def __init__(self, spec, state_dict, config, data, device, reporter, source, on_candidate=None,
                 stages=None) -> None:  # fmt: skip
        self.spec, self.config, self.device, self.reporter = spec, config, device, reporter
        self.on_candidate, self.stages = on_candidate, stages
        saved = stages.load() if stages is not None else None
        self.teacher = _frozen(build_model(spec, state_dict))
        self.base = simplify_batchnorms(self.teacher, state_dict) if config.fold_batchnorm else dict(state_dict)
        self.weights, self.fine = coded_keys(self.base)
        self.student = _frozen(build_model(spec, self.base))
        self.sizes = {key: self.base[key].numel() for key in self.weights}
        self.template = _template(spec, self.base, self.weights + self.fine, state_dict, source)
        self.offer = None
        self.saved = saved
        if saved is not None and config.hidden:
            self.offer = restore_offer(saved[1], spec)
        elif config.hidden:
            self.offer = offer_predictor(
                self.base, spec, hidden=config.hidden, iters=config.fit_iters, seed=config.seed, device=str(device),
                reporter=reporter,
            )  # fmt: skip
        self.data, self.holdout, self.sensitivity = data, None, None
        if config.allocation == "batchnorm" or (config.allocation == "sensitivity" and data is None):
            self.sensitivity = batchnorm_sensitivity(self.teacher, state_dict, self.weights)
        if data is None:
            return
        self.data, held = split_holdout(data, fraction=config.holdout, seed=config.holdout_seed)
        mean, std = preset_stats(spec.preset)
        held_x = to_float(held.images, mean=mean, std=std)
        self.holdout = _Holdout(held_x, held.labels, predictions(self.teacher, held_x))
        if config.allocation == "sensitivity":
            with reporter.phase("sensitivity", total=None):
                model = build_model(spec, self.base).eval()
                self.sensitivity = layer_sensitivity(
                    model, self.weights, self.data, preset=spec.preset, batches=config.sensitivity_batches,
                    batch_size=config.batch_size, seed=config.seed,
                )  # fmt: skip

    def steps(self, coarseness: float) -> dict[str, float]:
        steps = layer_steps(coarseness, self.weights, self.sensitivity, self.sizes)
        return {**steps, **{key: fine_step(self.base[key]) for key in self.fine}}

    def initial_latents(self) -> dict[str, Tensor]:
        return {key: self.base[key].float().clone() for key in self.weights + self.fine}

    def candidate(self, coarseness: float, state: dict[str, Tensor], finetuned: int = 0) -> Candidate:
        steps = layer_steps(coarseness, self.weights, self.sensitivity, self.sizes)
        codes = quantize_state(state, steps, self.fine, self.config.rate_weight)
        template, offsets = self.template, {}
        if self.offer is not None:
            layer_codes, choice = choose(self.offer, state, steps, rate_weight=self.config.rate_weight)
            codes.update(layer_codes)
            template = with_predictor(self.template, self.offer, choice)
            offsets = {key: self.offer.predicted[key] for key in choice.residual}
        found = Candidate(coarseness, codes, _file_bytes(template, codes), finetuned_steps=finetuned)
        found.extra["template"] = template
        if self.offer is not None:
            found.extra["hybrid"] = {"layers": choice.table, "predictor_used": choice.predictor_used,
                                     "predictor_bytes": self.offer.predictor_bytes}  # fmt: skip
        if self.holdout is not None:
            weights = dequantized(self.base, codes)
            weights.update({key: weights[key] + offset for key, offset in offsets.items()})
            found.agreement, found.top1 = self.holdout.figures(self.student, weights)
            found.extra["reference_top1"] = self.holdout.reference_top1
        if self.on_candidate is not None:
            self.on_candidate(_with_codes(template, codes), _describe(found))
        return found

    def offsets(self, coarseness: float, latents: dict[str, Tensor]) -> dict[str, Tensor]:
        """The predictor's output for the layers that take it at this step (their grids are shifted by it)."""
        if self.offer is None:
            return {}
        steps = layer_steps(coarseness, self.weights, self.sensitivity, self.sizes)
        _, choice = choose(self.offer, {**self.base, **latents}, steps, rate_weight=self.config.rate_weight)
        return {key: self.offer.predicted[key] for key in choice.residual}

    def finetuned(self, coarseness: float, latents: dict[str, Tensor], *, stage: int,
                  generator: torch.Generator | None = None) -> Candidate:  # fmt: skip
        generator = generator or torch.Generator().manual_seed(self.config.seed)
        with self.reporter.phase(f"fine-tune at step {coarseness:.4g}", total=self.config.stage_iters) as on_step:
            finetune(self.student, self.teacher, latents, self.steps(coarseness), self.data, self.config,
                     spec=self.spec, iters=self.config.stage_iters, generator=generator, device=self.device,
                     offsets=self.offsets(coarseness, latents), on_step=on_step,
                     stop=None if self.stages is None else self.stages.stop_requested)  # fmt: skip
        return self.candidate(coarseness, {**self.base, **latents}, self.config.stage_iters * stage)

    def search(self, target: AccuracyGate) -> list[Candidate]:
        """The coarsest step that meets the target without fine-tuning, then coarser ones, each stage fine-tuned
        from the last, until one misses the target. With ``stages``, the state is saved after each stage."""
        config = self.config
        generator = torch.Generator().manual_seed(config.seed)
        if self.saved is not None:
            found, first_stage, coarseness, latents, passing = self.restore(target, generator)
        else:
            found, coarseness = [], config.search_from
            with self.reporter.phase("search without fine-tuning", total=config.search_steps) as on_step:
                for index in range(config.search_steps):
                    found.append(self.candidate(coarseness, self.base))
                    on_step(index + 1, config.search_steps, {})
                    self.reporter.log(_line(found[-1]))
                    if not _meets(found[-1], target):
                        break
                    coarseness *= config.growth
            passing = any(_meets(c, target) for c in found)
            coarseness = max([c.coarseness for c in found if _meets(c, target)], default=config.search_from)
            latents, first_stage = self.initial_latents(), 0
            self.save(found, target, 0, coarseness, latents, generator)
        for stage in range(first_stage, config.stages if config.stage_iters else 0):
            if not _meets(found[-1], target) and found[-1].finetuned_steps:
                break  # the last stage already missed: the search is over (a resumed run ends here too)
            if passing or stage:
                coarseness *= config.growth
            found.append(self.finetuned(coarseness, latents, stage=stage + 1, generator=generator))
            self.reporter.log(_line(found[-1]))
            self.save(found, target, stage + 1, coarseness, latents, generator)
        return found

    def save(self, found, target, stage, coarseness, latents, generator) -> None:
        """The search's state after ``stage`` fine-tuning stages: every candidate's figures, the codes of the two
        that can still be chosen (the smallest passing, the closest), the latents and the generator."""
        if self.stages is None:
            return
        keep = {id(c) for c in (_choose(found, target)[0], _closest(found)) if c is not None}
        document = {
            "stage": stage, "coarseness": coarseness,
            "candidates": [{**_describe(c), "kept": id(c) in keep, "residual": _residual(c)} for c in found],
        }  # fmt: skip
        tensors = {f"latents/{key}": value for key, value in latents.items()}
        tensors["generator"] = generator.get_state()
        for index, found_one in enumerate(found):
            if id(found_one) in keep:
                tensors.update({f"kept/{index}/{key}": code.ints for key, code in found_one.codes.items()})
                tensors.update({f"kept/{index}/step/{key}": torch.tensor([code.step], dtype=torch.float64)
                                for key, code in found_one.codes.items()})  # fmt: skip
        if self.offer is not None:
            offer_tensors, _ = format2.encode(self.offer.nern)
            tensors.update({f"offer/{key}": value for key, value in offer_tensors.items()})
        self.stages.save(document, tensors)

    def restore(self, target, generator):
        """The search's state from a stage snapshot (see ``save``)."""
        document, tensors = self.saved
        found = []
        for index, described in enumerate(document["candidates"]):
            codes = None
            if described["kept"]:
                codes = {key[len(f"kept/{index}/"):]: QuantizedTensor(float(tensors[f"kept/{index}/step/{key[len(f'kept/{index}/'):]}"]),
                                                                      value)
                         for key, value in tensors.items()
                         if key.startswith(f"kept/{index}/") and not key.startswith(f"kept/{index}/step/")}  # fmt: skip
            candidate = Candidate(described["coarseness"], codes, described["bytes"], described["agreement"],
                                  described["top1"], described["finetuned_steps"])  # fmt: skip
            candidate.extra["reference_top1"] = self.holdout.reference_top1
            template = self.template
            if self.offer is not None and described["residual"]:
                choice = Choice(described["residual"], {}, True, 0.0)
                template = with_predictor(self.template, self.offer, choice)
            candidate.extra["template"] = template
            found.append(candidate)
        latents = {key[len("latents/"):]: value for key, value in tensors.items() if key.startswith("latents/")}
        generator.set_state(tensors["generator"])
        passing = any(_meets(c, target) for c in found if not c.finetuned_steps)
        self.reporter.log(f"resuming the search after stage {document['stage']} ({len(found)} candidates)")
        return found, document["stage"], document["coarseness"], latents, passing


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _template(spec, base, coded, state_dict, source) -> Nern:
    return Nern(
        arch=spec, layers=[], embedding=EmbeddingConfig(), predictor=None, positions={}, scales={},
        raw={key: value for key, value in base.items() if key not in coded}, key_order=list(state_dict),
        permute="none", source=dict(source or {}),
    )  # fmt: skip


def _with_codes(template: Nern, codes: dict[str, QuantizedTensor]) -> Nern:
    return dataclasses.replace(template, codes=dict(codes), history=list(template.history))


def _file_bytes(template: Nern, codes: dict[str, QuantizedTensor]) -> int:
    """The size of the file these codes make (format 2, everything counted) before the coding stage's own record
    joins its history (a few hundred bytes of compressed JSON)."""
    tensors, metadata = format2.encode(_with_codes(template, codes))
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    return len(safetensors_header(specs, metadata)) + sum(value.numel() for value in tensors.values())


def _meets(found: Candidate, target: AccuracyGate) -> bool:
    drop = None if found.top1 is None else found.extra["reference_top1"] - found.top1
    return target.check(found.agreement, drop, on="held-out training images")["passed"]


def _choose(candidates: list[Candidate], target: AccuracyGate | None) -> tuple[Candidate, bool | None]:
    """The smallest candidate that meets the target; without one, the most faithful (the smallest on ties).
    Candidates restored without their codes (never the choice when they were saved) are not chosen."""
    candidates = [found for found in candidates if found.codes is not None]
    if target is None:
        return candidates[-1], None
    passing = [found for found in candidates if _meets(found, target)]
    if passing:
        return min(passing, key=lambda found: found.bytes), True
    return _closest(candidates), False


def _closest(candidates: list[Candidate]) -> Candidate | None:
    with_codes = [found for found in candidates if found.codes is not None and found.agreement is not None]
    return max(with_codes, key=lambda found: (found.agreement, -found.bytes), default=None)


def _residual(found: Candidate) -> list[str]:
    hybrid = found.extra.get("hybrid")
    return [] if not hybrid else sorted(k for k, row in hybrid["layers"].items() if row["predictor"] and hybrid["predictor_used"])


def _resume_hint(stop) -> str:
    return ": the search's last completed stage is saved; run the same command with --resume to continue"


def _describe(found: Candidate) -> dict[str, Any]:
    return {
        "coarseness": round(found.coarseness, 6), "bytes": found.bytes, "agreement": found.agreement,
        "top1": found.top1, "finetuned_steps": found.finetuned_steps,
    }  # fmt: skip


def _line(found: Candidate) -> str:
    figures = "" if found.agreement is None else f", {found.agreement:.2f}% agreement on held-out images"
    return f"step {found.coarseness:.4g}: {found.bytes:,} B{figures} ({found.finetuned_steps} fine-tuning steps)"
