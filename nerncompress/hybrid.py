"""The hybrid codec: a layer is coded as the predictor's output plus a coded residual, or plainly, whichever is
fewer bytes at the same step (so the same distortion); the predictor is kept only if the bytes it saves exceed its
own.

At the same step, plain coding of weights ``W`` and residual coding of ``W - P`` (``P`` the predictor's output) give
the same rounding error, so the choice is a choice of rate alone: the residual's integers plus the layer's positions
(about log2(N!) bits) against the plain integers. The predictor (quantized to 8 bits) is paid once for all the
layers that use it. This module fits the predictor (``offer_predictor``) and makes those choices per step
(``choose``); ``coding`` calls both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import entropy
from .artifact import predictor_bytes
from .codes import QuantizedTensor, rate_distortion_round
from .compression import QuantizeConfig, compress
from .models import ArchSpec
from .nern import Nern
from .progress import Reporter
from .training import FitConfig, fit

PREDICTOR_BITS = 8


@dataclass
class PredictorOffer:
    """A fitted predictor, quantized as it would be stored, and what it offers each layer.

    Attributes:
        nern: the representation (its predictor holds the stored, quantized values).
        predicted: layer -> the predictor's output, float32, the layer's shape.
        position_bytes: layer -> bytes of the layer's positions.
        predictor_bytes: bytes of the predictor's streams.
    """

    nern: Nern
    predicted: dict[str, Tensor]
    position_bytes: dict[str, int]
    predictor_bytes: int


def offer_predictor(
    state: dict[str, Tensor], spec: ArchSpec, *, hidden: int, iters: int, seed: int, device: str, reporter: Reporter
) -> PredictorOffer:
    """Fit a predictor of width ``hidden`` to the conv weights of ``state`` (reconstruction, ``iters`` steps), quantize
    it to 8 bits, and compute its output for every layer it represents."""
    config = FitConfig(hidden=hidden, iters=iters, seed=seed)
    with reporter.phase("fit the predictor", total=iters) as on_step:
        nern = fit(state, config, arch=spec, device=device, on_step=on_step)
    nern = compress(nern, QuantizeConfig(bits=PREDICTOR_BITS, rounding="nearest", qat_iters=0), device=device)
    with torch.no_grad():
        predicted = {entry.name: nern.regenerate_layer(entry).detach().cpu() for entry in nern.layers}
    positions = {
        entry.name: len(entropy.encode_permutation(nern.positions[entry.name].numpy())) for entry in nern.layers
    }
    return PredictorOffer(nern, predicted, positions, predictor_bytes(nern.predictor, nern.compression))


def restore_offer(tensors: dict[str, Tensor], spec: ArchSpec) -> PredictorOffer:
    """The offer of a saved search (``offer/meta`` and ``offer/streams`` tensors: the predictor's Nern in format 2),
    without fitting again."""
    from .artifact import v2

    nern = v2.decode({key[len("offer/"):]: value for key, value in tensors.items() if key.startswith("offer/")},
                     trust_code=not spec.untrusted)  # fmt: skip
    nern.arch = spec
    with torch.no_grad():
        predicted = {entry.name: nern.regenerate_layer(entry).detach().cpu() for entry in nern.layers}
    positions = {
        entry.name: len(entropy.encode_permutation(nern.positions[entry.name].numpy())) for entry in nern.layers
    }
    return PredictorOffer(nern, predicted, positions, predictor_bytes(nern.predictor, nern.compression))


@dataclass
class Choice:
    """Which layers take the predictor at one step, and the bytes behind the choice."""

    residual: list[str]
    table: dict[str, dict[str, Any]]
    predictor_used: bool
    saved_bytes: float


def choose(
    offer: PredictorOffer, state: dict[str, Tensor], steps: dict[str, float], *, rate_weight: float
) -> tuple[dict[str, QuantizedTensor], Choice]:
    """Codes of the represented layers (residual where it pays, else plain) and the choice behind them.

    Returns:
        ``(codes, choice)``: codes of every layer the predictor represents; ``choice.table`` has, per layer, the
        estimated bytes plain and as residual (positions included) and which was taken.
    """
    codes, table, residual, saved = {}, {}, [], 0.0
    for name, prediction in offer.predicted.items():
        plain = rate_distortion_round(state[name], steps[name], rate_weight=rate_weight)
        rest = rate_distortion_round(state[name] - prediction, steps[name], rate_weight=rate_weight)
        plain_bytes = entropy.estimate_bits(plain.ints.numpy().reshape(-1)) / 8
        residual_bytes = entropy.estimate_bits(rest.ints.numpy().reshape(-1)) / 8 + offer.position_bytes[name]
        pays = residual_bytes < plain_bytes
        table[name] = {"plain": round(plain_bytes), "residual": round(residual_bytes), "predictor": pays}
        codes[name] = rest if pays else plain
        if pays:
            residual.append(name)
            saved += plain_bytes - residual_bytes
    used = bool(residual) and saved > offer.predictor_bytes
    if not used:  # the predictor costs more than it saves: every layer plain
        for name in residual:
            codes[name] = rate_distortion_round(state[name], steps[name], rate_weight=rate_weight)
            table[name]["predictor"] = False
        residual = []
    return codes, Choice(residual, table, used, saved)


def with_predictor(template: Nern, offer: PredictorOffer, choice: Choice) -> Nern:
    """``template`` (a coded Nern without predictor) with the predictor, the layers that take it and their
    positions; their codes (in ``template.codes``) are residuals."""
    if not choice.predictor_used:
        return template
    kept = [entry for entry in offer.nern.layers if entry.name in choice.residual]
    return dataclasses.replace(
        template,
        layers=kept,
        embedding=offer.nern.embedding,
        predictor=offer.nern.predictor,
        positions={entry.name: offer.nern.positions[entry.name] for entry in kept},
        permute=offer.nern.permute,
        compression=offer.nern.compression,
        coordinate_layers=len(offer.nern.layers),
    )
