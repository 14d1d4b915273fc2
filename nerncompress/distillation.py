"""Training against a teacher network: the decoupled ``distill`` phase and the loop it shares with NeRN's joint
objective (``fit --scheme nern``).

The student is the architecture whose represented conv weights the predictor regenerates at every step, so the
gradients of KD (and FMD) flow through those weights into the predictor's parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._version import __version__
from .data import MIX_METHODS, ImageData, draw_batch, preset_stats, split_holdout, to_float
from .devices import resolve_device
from .distributed import World, average_gradients, current, gather_rows, mean_of
from .errors import UsageError
from .losses import capture_features, feature_map_loss, feature_taps, kd_loss, logit_mse_loss
from .models.registry import build_model, check_arch
from .nern import Nern, expand_state_dict
from .optim import lr_at, use_bf16
from .progress import StepCallback
from .reconstruction import kernel_groups, sampled_recon_loss
from .resume import Checkpointer, LoopState

DISTILL_CONFIG_VERSION = 1
KD_LOSSES = ("kl", "mse")


@dataclass
class DistillConfig:
    """Knowledge distillation of a fitted predictor (the 2024 paper's decoupled second phase).

    Attributes:
        iters: optimisation steps.
        lr: peak Adam learning rate. Distillation needs a small step: on ResNet-20 3e-5 beat 1e-5 (93.6% vs
            92.7% agreement after 300 steps), and 2e-4 is known to destroy a fitted predictor.
        warmup, final_lr_ratio: schedule (see ``lr_at``).
        batch_size: images per step.
        temperature: softening of both output distributions in the KL term.
        kd_loss: ``kl`` (Hinton's KL at ``temperature``) or ``mse`` (squared difference of centred logits).
        kd_weight: weight of logits KD.
        fmd_weight: weight of feature-map distillation (0 = off; NeRN: 1e-4 for ResNet-20).
        recon_weight: weight of kernel reconstruction against the original weights (0 = off; NeRN: 1).
        recon_sample: kernels per step in the reconstruction term (NeRN: 4096).
        augment: CIFAR-style crop + flip of the training images.
        mix: ``none``, ``mixup`` or ``cutmix`` blending of images within a batch (see ``data.mix_batch``).
        mix_fraction: share of each batch that is mixed.
        probe_fraction: share of each batch replaced by *disagreement probes* (see ``disagreement_probes``): images
            moved by one signed-gradient step towards where student and teacher differ most.
        probe_eps: largest probe step, in units of 1/255 of the pixel range (each image draws U(0, eps)).
        holdout: share of the training images held out to select the best step (never the test set).
        holdout_seed: seed of that split. Kept apart from ``seed`` so that runs with different seeds hold out the
            same images and their held-out agreements can be compared (to keep the best of several seeds).
        eval_every: steps between holdout evaluations (0 = only at the end).
        ema_decay: keep an exponential moving average of the predictor's weights with this decay per step (0 = off;
            e.g. 0.998 averages over about the last 500 steps). The average, not the raw weights, is then what the
            holdout scores and what is written: KD at a small learning rate wanders around a plateau, and an average
            of nearby points of that walk is a steadier end point than any one of them.
        noise_low, noise_high: range of the uniform noise images of data-free distillation.
        precision: auto | bf16 | fp32 autocast of the training forward passes (see ``FitConfig``).
        seed: seeds batch order, augmentation and noise.
    """

    iters: int = 300
    lr: float = 3e-5
    warmup: float = 0.0
    final_lr_ratio: float = 0.1
    batch_size: int = 128
    temperature: float = 1.0
    kd_loss: str = "kl"
    kd_weight: float = 1.0
    fmd_weight: float = 0.0
    recon_weight: float = 0.0
    recon_sample: int = 4096
    augment: bool = True
    mix: str = "mixup"
    mix_fraction: float = 0.5
    probe_fraction: float = 0.0
    probe_eps: float = 8.0
    holdout: float = 0.1
    holdout_seed: int = 0
    eval_every: int = 100
    ema_decay: float = 0.0
    noise_low: float = -2.0
    noise_high: float = 2.0
    precision: str = "auto"
    seed: int = 0
    version: int = DISTILL_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise UsageError(f"iters must be >= 1, got {self.iters}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if self.kd_loss not in KD_LOSSES:
            raise UsageError(f"kd_loss must be one of {', '.join(KD_LOSSES)}, got {self.kd_loss!r}")
        if self.mix not in MIX_METHODS:
            raise UsageError(f"mix must be one of {', '.join(MIX_METHODS)}, got {self.mix!r}")
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise UsageError(f"mix_fraction must be in [0, 1], got {self.mix_fraction}")
        if not 0.0 <= self.probe_fraction <= 1.0:
            raise UsageError(f"probe_fraction must be in [0, 1], got {self.probe_fraction}")
        if not self.probe_eps > 0:
            raise UsageError(f"probe_eps must be > 0, got {self.probe_eps}")
        if min(self.kd_weight, self.fmd_weight, self.recon_weight) < 0:
            raise UsageError("loss weights must be >= 0")
        if not 0.0 <= self.holdout < 1.0:
            raise UsageError(f"holdout must be in [0, 1), got {self.holdout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UsageError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as they will in the artifact


class _Regenerator:
    """Differentiable regeneration of every represented layer, with the embeddings computed once."""

    def __init__(self, nern: Nern, device: torch.device) -> None:
        self.nern = nern
        self.groups = []
        for size in nern.predictor.config.kernel_sizes:
            entries = [e for e in nern.layers if e.kernel_size == size]
            if entries:
                embeddings = torch.cat([nern.layer_embeddings(e) for e in entries]).to(device)
                self.groups.append((size, entries, embeddings))
        self.scales = {name: scale.to(device).view(-1, 1, 1, 1) for name, scale in nern.scales.items()}
        self.ones = torch.ones((), device=device)

    def __call__(self) -> dict[str, Tensor]:
        """All represented weights, as one predictor pass per kernel size (gradients reach the predictor)."""
        weights: dict[str, Tensor] = {}
        for size, entries, embeddings in self.groups:
            kernels = self.nern.predictor(embeddings, size)
            start = 0
            for entry in entries:
                block = kernels[start : start + entry.num_kernels]
                start += entry.num_kernels
                weight = block.view(entry.c_out, entry.c_in, size, size)
                weights[entry.name] = weight * self.scales.get(entry.name, self.ones)
        return weights


def student_model(nern: Nern, device: torch.device) -> nn.Module:
    """The architecture holding the Nern's raw tensors, frozen; represented weights are supplied per call."""
    model = build_model(nern.arch, expand_state_dict(nern, device="cpu")).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _draw_images(data, config: DistillConfig, mean, std, shape, generator) -> Tensor:
    """The whole global batch, on the CPU: every rank of a data-parallel run draws it alike, then takes its shard."""
    return draw_batch(
        data, config.batch_size, mean=mean, std=std, shape=shape, generator=generator, augment=config.augment,
        mix=config.mix, mix_fraction=config.mix_fraction, noise_low=config.noise_low, noise_high=config.noise_high,
    )  # fmt: skip


def disagreement_probes(
    x: Tensor, student: nn.Module, weights: dict[str, Tensor], teacher: nn.Module, *, eps: Tensor
) -> Tensor:
    """Move each image one signed-gradient step up the KL divergence between teacher and student.

    Plain KD only shows the student images the teacher has seen in training, where both agree with a wide margin;
    the images they disagree on lie near the teacher's decision boundaries. A probe is a cheap way there
    (in the spirit of Heo et al., "Knowledge distillation with adversarial samples supporting decision
    boundary", AAAI 2019): one step of size ``eps`` (per image, in normalised input units) along the sign of the
    gradient of KL(teacher || student) with respect to the input. Neither network is trained here.

    Args:
        x: float ``(N, C, H, W)`` normalised images.
        student: the architecture called with ``weights`` (detached: probes never train the predictor).
        teacher: the teacher network.
        eps: float ``(N,)`` or ``(N, C)`` step sizes.

    Returns:
        The probes, detached, like ``x``.
    """
    x = x.detach().clone().requires_grad_(True)
    frozen = {name: value.detach() for name, value in weights.items()}
    with torch.enable_grad():
        divergence = kd_loss(functional_call(student, frozen, (x,), strict=False).float(), teacher(x).float())
        (gradient,) = torch.autograd.grad(divergence, x)
    step = eps.view(eps.shape[0], -1, 1, 1) if eps.dim() == 2 else eps.view(-1, 1, 1, 1)
    return (x + step * gradient.sign()).detach()


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def update_average(average: dict[str, Tensor], module: nn.Module, decay: float) -> None:
    """One step of an exponential moving average: ``average = decay * average + (1 - decay) * weights``."""
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            average[key].lerp_(value, 1.0 - decay)
        else:
            average[key].copy_(value)


@contextlib.contextmanager
def weights_swapped(module: nn.Module, state: dict[str, Tensor] | None) -> Iterator[None]:
    """Run the block with ``state`` loaded into ``module``, then put its own weights back (None: no swap)."""
    if state is None:
        yield
        return
    own = _copy_state(module)
    module.load_state_dict(state)
    try:
        yield
    finally:
        module.load_state_dict(own)


@torch.no_grad()
def _predictions(model, holdout_x: Tensor, world: World, batch: int = 500) -> Tensor:
    """Classes ``model`` predicts for every held-out image; each rank of a run predicts its share."""
    mine = holdout_x[world.shard(holdout_x.shape[0])]
    predictions = [model(mine[start : start + batch]).argmax(dim=1) for start in range(0, mine.shape[0], batch)]
    local = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=holdout_x.device)
    return gather_rows(local, holdout_x.shape[0], world)


def _holdout_predictions(student, regenerate, holdout_x: Tensor, world: World = World()) -> Tensor:
    with torch.no_grad():
        weights = regenerate()
    return _predictions(lambda x: functional_call(student, weights, (x,), strict=False), holdout_x, world)


def _holdout_score(
    student, regenerate, holdout_x: Tensor, teacher_predictions: Tensor, world: World = World()
) -> float:
    """Percent of held-out images on which the student predicts the teacher's class."""
    predicted = _holdout_predictions(student, regenerate, holdout_x, world)
    return 100.0 * float((predicted == teacher_predictions).float().mean())


def _top1(predictions: Tensor, labels: Tensor) -> float:
    return 100.0 * float((predictions.cpu() == labels.cpu()).float().mean())


def train_with_teacher(
    nern: Nern,
    teacher: nn.Module,
    data: ImageData | None,
    config: DistillConfig,
    *,
    device: torch.device,
    target_weights: dict[str, Tensor] | None = None,
    on_step: StepCallback | None = None,
    log_every: int = 10,
    checkpointer: Checkpointer | None = None,
) -> dict[str, Any]:
    """The teacher loop shared by ``distill`` (KD only) and ``fit --scheme nern`` (recon + KD + FMD).

    The student is the architecture whose represented conv weights are regenerated by the predictor at every
    step, so the gradients of KD and FMD flow through those weights into the predictor's parameters.
    ``target_weights`` (used when ``config.recon_weight > 0``): the conv weights the reconstruction term holds the
    predictor to; None = the weights it regenerates before training.
    Model selection: every ``eval_every`` steps the student's agreement with the teacher on the held-out
    training images is measured and the best predictor state is kept.

    In a data-parallel run (see ``distributed.py``) every rank draws the whole global batch of ``batch_size``
    images alike (the same generator: sampling, augmentation, mixing, probe steps) and trains on its equal shard;
    the losses are batch means, so the mean of the ranks' gradients is the gradient of the global batch, and every
    rank holds the same predictor. The student and the teacher run in eval mode (BatchNorm uses its running
    statistics), so a shard's outputs do not depend on the rest of the batch. The holdout is scored in shares.
    """
    world = current()
    mean, std = preset_stats(nern.arch.preset)
    generator = torch.Generator().manual_seed(config.seed)
    holdout_x = holdout_y = None
    if data is not None and config.holdout > 0 and len(data) >= 20:
        data, holdout = split_holdout(data, fraction=config.holdout, seed=config.holdout_seed)
        holdout = holdout.in_memory()  # scored every eval_every steps: decoded once (a streamed tree's share)
        holdout_x, holdout_y = to_float(holdout.images, mean=mean, std=std).to(device), holdout.labels
    teacher = teacher.to(device).eval()
    student = student_model(nern, device)
    predictor = nern.predictor.to(device)
    regenerate = _Regenerator(nern, device)
    taps_student = feature_taps(student) if config.fmd_weight > 0 else []
    taps_teacher = feature_taps(teacher) if config.fmd_weight > 0 else []
    recon_groups = []
    if config.recon_weight > 0:
        # No targets: hold the predictor to the weights it regenerates now, which the student already holds.
        targets = target_weights if target_weights is not None else student.state_dict()
        recon_groups = kernel_groups(nern, targets, device, "uniform")
    optimizer = torch.optim.Adam(predictor.parameters(), lr=config.lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config.precision, device))
    teacher_holdout = None
    if holdout_x is not None:
        with torch.no_grad():
            teacher_holdout = _predictions(teacher, holdout_x, world)
    resumed = checkpointer.restore(predictor, optimizer, generator) if checkpointer is not None else None
    if resumed is not None:
        best, best_state, average = resumed.best, resumed.best_predictor, resumed.average
    else:
        best = {"step": 0, "holdout_agreement": None}
        if teacher_holdout is not None:
            best["holdout_agreement"] = _holdout_score(student, regenerate, holdout_x, teacher_holdout, world)
        best_state = _copy_state(predictor)
        average = _copy_state(predictor) if config.ema_decay > 0 else None
    probe_step = (config.probe_eps / 255.0) / torch.tensor([std])  # largest step per channel, normalised units
    metrics: dict[str, float] = {}
    shard = world.shard(config.batch_size)  # the batch size divides by the world size (checked by the job)
    reported = None
    for step in range(resumed.step if resumed is not None else 0, config.iters):
        lr = lr_at(step, total=config.iters, peak=config.lr, warmup=config.warmup, final_ratio=config.final_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        predictor.train()
        batch = _draw_images(data, config, mean, std, nern.arch.input_shape, generator)
        x = batch[shard].to(device)
        with autocast:
            weights = regenerate()
        probes = round(batch.shape[0] * config.probe_fraction)
        if probes:  # the last `probes` images of the global batch; this shard's among them
            eps = torch.rand(probes, 1, generator=generator) * probe_step
            first = max(shard.start, batch.shape[0] - probes)
            if first < shard.stop:
                start = batch.shape[0] - probes
                mine, steps = slice(first - shard.start, None), eps[first - start : shard.stop - start]
                with autocast:
                    x[mine] = disagreement_probes(x[mine], student, weights, teacher, eps=steps.to(device))
        with autocast, torch.no_grad(), capture_features(taps_teacher) as teacher_features:
            teacher_logits = teacher(x)
        with autocast, capture_features(taps_student) as student_features:
            student_logits = functional_call(student, weights, (x,), strict=False)
        teacher_features = [f.float() for f in teacher_features]
        student_features = [f.float() for f in student_features]
        if config.kd_loss == "mse":
            loss_kd = logit_mse_loss(student_logits.float(), teacher_logits.float())
        else:
            loss_kd = kd_loss(student_logits.float(), teacher_logits.float(), temperature=config.temperature)
        loss = config.kd_weight * loss_kd
        if config.fmd_weight > 0:
            loss = loss + config.fmd_weight * feature_map_loss(student_features, teacher_features)
        if recon_groups:
            with autocast:
                recon = sampled_recon_loss(nern, recon_groups, config.recon_sample, generator)
            loss = loss + config.recon_weight * recon.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(predictor.parameters(), world)
        optimizer.step()
        if average is not None:
            update_average(average, predictor, config.ema_decay)
        done = step + 1
        if step % log_every == 0 or done == config.iters:  # every rank: the figures are means over the ranks
            reported = mean_of(torch.stack([loss.detach().float(), loss_kd.detach().float()]), world).cpu()
            if on_step is not None:
                metrics = {"loss": float(reported[0]), "kd": float(reported[1]), "lr": lr}
                on_step(done, config.iters, metrics)
        if teacher_holdout is not None and (
            done == config.iters or (config.eval_every and done % config.eval_every == 0)
        ):
            predictor.eval()
            with weights_swapped(predictor, average):  # the average is what would be written
                score = _holdout_score(student, regenerate, holdout_x, teacher_holdout, world)
                if score >= best["holdout_agreement"]:
                    best = {"step": done, "holdout_agreement": score}
                    best_state = _copy_state(predictor)
        if checkpointer is not None:  # last in the step: a snapshot sees the state an uninterrupted run goes on from
            checkpointer.step_done(
                done, config.iters,
                lambda: LoopState.capture(
                    done, predictor, optimizer, generator, best=best, best_predictor=best_state, average=average
                ),
            )  # fmt: skip
    figures: dict[str, Any] = {"holdout_top1": None, "holdout_teacher_top1": None}
    if teacher_holdout is not None:
        predictor.load_state_dict(best_state)
        predictor.eval()
        figures["holdout_top1"] = _top1(_holdout_predictions(student, regenerate, holdout_x, world), holdout_y)
        figures["holdout_teacher_top1"] = _top1(teacher_holdout, holdout_y)
    else:
        best = {"step": config.iters, "holdout_agreement": None}
        if average is not None:
            predictor.load_state_dict(average)
    predictor.eval().cpu()
    return {
        "final_loss": float(reported[0]), "selected_step": best["step"],
        "holdout_agreement": best["holdout_agreement"], **figures,
    }  # fmt: skip


def distill(
    nern: Nern,
    teacher: nn.Module,
    data: ImageData | None,
    config: DistillConfig | None = None,
    *,
    device: str = "auto",
    on_step: StepCallback | None = None,
    teacher_source: dict | None = None,
    checkpointer: Checkpointer | None = None,
    target_weights: dict[str, Tensor] | None = None,
) -> Nern:
    """Decoupled distillation: fine-tune the predictor so the regenerated network matches a teacher's outputs.

    Distill before pruning or quantizing: a compressed predictor is refused (see ``check_distillable``).

    Args:
        nern: a fitted, uncompressed representation (modified in place and returned).
        teacher: any model of the same task (the original, or a stronger one); its output classes must match.
        data: training images, or None for data-free distillation on uniform noise.
        config: the recipe; defaults to ``DistillConfig()``.
        device: auto | cpu | cuda[:N].
        on_step: progress callback ``(step, total, metrics)``.
        teacher_source: provenance of the teacher recorded in the history.
        checkpointer: saves the loop's progress periodically and on SIGINT/SIGTERM, and resumes a saved run
            (see ``resume.py``); None trains without snapshots.
        target_weights: conv weights the reconstruction term (``config.recon_weight > 0``) holds the predictor
            to, e.g. the original checkpoint's; None = the weights it regenerates before distillation.

    Returns:
        The same Nern, its history extended by a ``distill`` record.

    Raises:
        UsageError: a pruned or quantized predictor, a user builder read from an untrusted file (see
            ``registry.check_arch``), or a teacher of another task.
    """
    config = config or DistillConfig()
    torch_device = resolve_device(device)
    check_distillable(nern)
    check_arch(nern.arch)
    check_teacher(nern, teacher)
    torch.manual_seed(config.seed)
    if checkpointer is not None:
        checkpointer.start(
            "distill",
            {
                "config": config.to_dict(),
                "student": predictor_digest(nern),
                "teacher": dict(teacher_source or {}),
                "data": "noise" if data is None else data.source,
            },
        )
        checkpointer.begin_round(0, nern.history, None)
    result = train_with_teacher(
        nern, teacher, data, config, device=torch_device, on_step=on_step, checkpointer=checkpointer,
        target_weights=target_weights,
    )  # fmt: skip
    nern.history.append(
        {
            "stage": "distill",
            "tool_version": __version__,
            "config": config.to_dict(),
            "device": torch_device.type,
            "bf16": use_bf16(config.precision, torch_device),
            "data": "noise" if data is None else data.source,
            "teacher": dict(teacher_source or {}),
            "steps": config.iters,
            **result,
        }
    )
    return nern


# Compression state keys that describe storage only, not a change of the predictor's weights.
_STORAGE_ONLY_STATE = ("version", "raw_fp16", "layout")


def check_distillable(nern: Nern) -> None:
    """Refuse a predictor that is already pruned or quantized: distilling it would silently undo that.

    Fine-tuning moves pruned weights off zero and quantized weights off their grid; the artifact would then store
    them rounded back, losing what distillation learned, or not sparse at all. A state with only ``raw_fp16``
    (storage of the raw tensors) is accepted.

    Raises:
        UsageError: naming the compression stages found, in one line.
    """
    state = nern.compression or {}
    stages = [key for key in state if key not in _STORAGE_ONLY_STATE]
    if not stages:
        return
    described = []
    for key in stages:
        value = state[key]
        if key == "quantize" and isinstance(value, dict):
            bits = value.get("bits")
            described.append(f"quantized ({'fp16' if bits == 'fp16' else f'{bits}-bit'})")
        elif key in ("prune", "structured") and isinstance(value, dict):
            kind = "structured-pruned" if key == "structured" else "pruned"
            described.append(f"{kind} (sparsity {value.get('sparsity')})")
        else:
            described.append(str(key))
    raise UsageError(
        f"distill before prune/quantize: this .nern's predictor is already {' and '.join(described)}, and "
        "distilling it would silently undo that; distill the uncompressed .nern and compress the result, or "
        "compress with --kd-iters N to distill while pruning/quantizing"
    )


def predictor_digest(nern: Nern) -> str:
    """sha256 of the predictor's parameters: identifies the starting point of a distillation."""
    digest = hashlib.sha256()
    for key, value in nern.predictor.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_teacher(nern: Nern, teacher: nn.Module) -> None:
    """The teacher must take the student's inputs and produce as many classes.

    Raises:
        UsageError: naming both class counts.
    """
    student_classes = nern.arch.kwargs.get("num_classes")
    probe = torch.zeros((1, *nern.arch.input_shape))
    try:
        with torch.no_grad():
            teacher_classes = teacher.eval()(probe).shape[1]
    except RuntimeError as exc:
        raise UsageError(f"the teacher cannot take the student's inputs {nern.arch.input_shape}: {exc}") from exc
    if student_classes is not None and teacher_classes != student_classes:
        raise UsageError(
            f"the teacher predicts {teacher_classes} classes but the student {student_classes}: "
            "use a teacher trained on the same task"
        )
