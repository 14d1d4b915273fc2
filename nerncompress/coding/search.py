"""The search of ``code_checkpoint``: candidates at growing steps, fine-tuned stage by stage, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..artifact import v2 as format2
from ..codes import QuantizedTensor
from ..data import ImageData, preset_stats, split_holdout, to_float
from ..devices import resolve_device
from ..embeddings import EmbeddingConfig
from ..errors import UsageError
from ..gate import AccuracyGate
from ..hybrid import Choice, choose, offer_predictor, restore_offer, with_predictor
from ..models import ArchSpec, build_model, resolve_arch
from ..nern import Nern
from ..progress import Reporter, silent
from ..resume import (
    read_stage_snapshot,
    route_stop_signals,
    stop_if_signalled,
    write_stage_snapshot,
)
from ..safetensors_io import safetensors_header
from .config import DEFAULT_STEP, CodeConfig
from .finetune import Holdout, finetune, predictions
from .steps import (
    batchnorm_sensitivity,
    coded_keys,
    dequantized,
    fine_step,
    layer_sensitivity,
    layer_steps,
    quantize_state,
    simplify_batchnorms,
)


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

        def on_signal(name: str) -> None:
            if self.signal:
                raise KeyboardInterrupt(f"{name} received twice: stopped")
            self.signal = name

        with route_stop_signals(on_signal):
            yield self
        stop_if_signalled(self.signal, self.path, after="after the search")



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
        held_x = to_float(held.in_memory().images, mean=mean, std=std)  # scored at every stage: decoded once
        self.holdout = Holdout(held_x, held.labels, predictions(self.teacher, held_x))
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
        from the last, until a step misses the target twice (a stage that misses is repeated once at its step: the
        values it leaves are the best start there, and another annealed stage often passes). With ``stages``, the
        state is saved after each stage."""
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
            if _missed_twice(found, target):
                break  # the search is over (a resumed run ends here too)
            if found[-1].finetuned_steps and not _meets(found[-1], target):
                pass  # once more at this step
            elif passing or stage:
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


def _missed_twice(found: list[Candidate], target: AccuracyGate) -> bool:
    """Whether the last two candidates are fine-tuned stages at one step that both missed the target."""
    if len(found) < 2:
        return False
    last, before = found[-1], found[-2]
    same_step = math.isclose(last.coarseness, before.coarseness, rel_tol=1e-5)  # restored ones are rounded
    return (bool(last.finetuned_steps and before.finetuned_steps) and same_step
            and not _meets(last, target) and not _meets(before, target))  # fmt: skip


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



def _describe(found: Candidate) -> dict[str, Any]:
    return {
        "coarseness": round(found.coarseness, 6), "bytes": found.bytes, "agreement": found.agreement,
        "top1": found.top1, "finetuned_steps": found.finetuned_steps,
    }  # fmt: skip


def _line(found: Candidate) -> str:
    figures = "" if found.agreement is None else f", {found.agreement:.2f}% agreement on held-out images"
    return f"step {found.coarseness:.4g}: {found.bytes:,} B{figures} ({found.finetuned_steps} fine-tuning steps)"
