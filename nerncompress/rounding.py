"""Rounding the predictor's float weights to the integer grid ``quantize`` stores: GPTQ layer by layer
(``gptq_round_``, the default) or learned for all layers at once (``learned_round_``). The grid, the scales and
the storage are ``quantization.py``'s; this module only chooses, for each weight, which grid point it takes.

GPTQ (Frantar et al., 2023) rounds one input column at a time and spreads each column's error over the columns
not yet rounded, weighted by the layer's input correlations; here those inputs are what the already rounded layers
make of a sample of the represented kernels' embeddings.

Learned rounding (AdaRound, Nagel et al., ICML 2020, applied end to end): every quantized weight w lies between
two grid points, floor(w / s) * s and the one above. Instead of picking the nearest (or GPTQ's layer-by-layer
choice), each weight gets a relaxed choice h(v) in [0, 1],

    w_soft = s * clamp(floor(w / s) + h(v), -qmax, qmax),    h(v) = clamp(1.2 * sigmoid(v) - 0.1, 0, 1),

and the v of *all* layers are optimised together so that the regenerated kernels match their targets, while a
regulariser 1 - |2h - 1|^beta, its beta annealed from 20 to 2, pushes every h to 0 or 1. At the end each weight
rounds up where h >= 0.5. Optimising all layers jointly matters here: the predictor amplifies small weight errors
(int8 rounding of one layer, ~1% relative error, moves ResNet-56's regenerated kernels by 2-3%), so a layer-local
objective such as GPTQ's misses how the errors of different layers combine (ResNet-56 int8: 3.6% kernel error
after GPTQ, 2.9% after learned rounding). Lower kernel error is not always lower function error, though: without
a KD phase afterwards the pruned ResNet-56 predictor in int8 agreed less with its float parent after learned rounding
than after GPTQ, so ``quantize`` should follow it with ``--kd-iters``.

The scales are the max-abs scales of ``quantize_weight``; weights within half a step of a group's largest level
keep their nearest rounding, so the group's peak, and with it the scale, survive re-quantization exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .nern import Nern
from .progress import StepCallback
from .predictor import Predictor, head_name, linear_layers
from .quantization import gptq_weight, qmax_for, quantize_weight, round_fp16, round_weight
from .reconstruction import KernelGroup, sampled_recon_loss

WARMUP = 0.2  # share of the steps fitted without the regulariser, from the float weights' own fractions
BETA_START, BETA_END = 20.0, 2.0
STRETCH = 0.1  # h(v) = clamp((1 + 2 * STRETCH) * sigmoid(v) - STRETCH, 0, 1): reaches 0 and 1 exactly
GPTQ_SAMPLES = 65536  # kernels whose embeddings estimate each layer's input correlations


class SoftRounding(nn.Module):
    """Parametrization replacing a Linear weight by its relaxed rounding; ``hard`` switches to the final choice."""

    def __init__(self, weight: Tensor, bits: int, group_size: int | None, mask: Tensor | None = None) -> None:
        super().__init__()
        weight = weight.detach().to(torch.float32)
        if mask is not None:
            weight = weight * mask  # pruned weights are 0: their level is fixed at 0
        _, scales = quantize_weight(weight, bits, group_size)
        in_features = weight.shape[1]
        size = in_features if group_size is None else min(group_size, in_features)
        scale = scales.to(torch.float32).repeat_interleave(size, dim=1)[:, :in_features].to(weight.device)
        self.qmax = qmax_for(bits)
        ratio = weight / scale
        lower = torch.floor(ratio)
        fraction = ratio - lower
        free = ratio.abs() < self.qmax - 0.5  # the rest keep their nearest level: the group peaks
        if mask is not None:
            free &= mask.to(torch.bool)
        self.register_buffer("scale", scale)
        self.register_buffer("lower", lower)
        self.register_buffer("fixed", torch.round(ratio).clamp(-self.qmax, self.qmax))
        self.register_buffer("free", free)
        start = ((fraction + STRETCH) / (1 + 2 * STRETCH)).clamp(1e-4, 1 - 1e-4)
        self.v = nn.Parameter(torch.log(start) - torch.log1p(-start))  # h(v) = fraction: the float weight itself
        self.hard = False

    def choice(self) -> Tensor:
        """h(v) in [0, 1]: 0 rounds down, 1 rounds up."""
        return ((1 + 2 * STRETCH) * torch.sigmoid(self.v) - STRETCH).clamp(0.0, 1.0)

    def forward(self, _weight: Tensor) -> Tensor:
        up = (self.v >= 0).to(self.v.dtype) if self.hard else self.choice()
        levels = torch.where(self.free, (self.lower + up).clamp(-self.qmax, self.qmax), self.fixed)
        return self.scale * levels


def learned_round_(
    nern: Nern,
    groups: list[KernelGroup],
    *,
    bits: int,
    group_size: int | None,
    masks: dict[str, Tensor] | None,
    iters: int,
    lr: float = 1e-2,
    weight: float = 1.0,
    batch_size: int = 4096,
    seed: int = 0,
    on_step: StepCallback | None = None,
    log_every: int = 50,
) -> dict[str, float]:
    """Round every Linear weight of ``nern.predictor`` by learned rounding against ``groups``' targets; the result
    replaces ``nern.predictor`` (on the CPU, weights on the quantization grid, biases as they were: round them
    first). ``masks`` (pruned weights) stay zero. Runs in float32 on the device ``groups`` live on.

    Returns:
        ``rounding_final_loss``: the last step's reconstruction loss relative to the targets' mean square.
    """
    device = groups[0].targets.device
    predictor = nern.predictor.to(device)
    linears = linear_layers(predictor)
    frozen = {parameter: parameter.requires_grad for parameter in predictor.parameters()}
    for parameter in frozen:
        parameter.requires_grad_(False)
    roundings = {}
    for name, module in linears.items():
        mask = None if masks is None else masks[name].to(device)
        roundings[name] = SoftRounding(module.weight, bits, group_size, mask)
        parametrize.register_parametrization(module, "weight", roundings[name], unsafe=True)
    variables = [rounding.v for rounding in roundings.values()]
    free_count = sum(int(rounding.free.sum()) for rounding in roundings.values())
    target_power = sum(float((g.importance[:, None] * g.targets.pow(2)).sum()) for g in groups)
    target_power /= sum(g.targets.numel() for g in groups)
    optimizer = torch.optim.Adam(variables, lr=lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    warmup = int(WARMUP * iters)
    relative_loss = torch.zeros(())
    try:
        for step in range(iters):
            relative_loss = sampled_recon_loss(nern, groups, batch_size, generator) / max(target_power, 1e-30)
            loss = relative_loss
            if step >= warmup:
                beta = BETA_START + (BETA_END - BETA_START) * (step - warmup) / max(1, iters - warmup)
                undecided = sum(
                    (1 - (2 * r.choice()[r.free] - 1).abs().pow(beta)).sum() for r in roundings.values()
                )  # fmt: skip
                loss = loss + weight * undecided / max(1, free_count)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None and (step % log_every == 0 or step == iters - 1):
                on_step(step + 1, iters, {"loss": float(relative_loss.detach())})
    finally:
        with torch.no_grad():
            for name, module in linears.items():
                roundings[name].hard = True
                rounded = module.weight.detach().clone()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                module.weight.copy_(rounded)
        for parameter, requires_grad in frozen.items():
            parameter.requires_grad_(requires_grad)
        # Removing a parametrization re-registers the weight last; a fresh module keeps the canonical order.
        trained = predictor.cpu().state_dict()
        nern.predictor = Predictor(predictor.config).eval()
        nern.predictor.load_state_dict(trained)
    return {"rounding_final_loss": float(relative_loss.detach())}


@torch.no_grad()
def gptq_round_(nern: Nern, masks: dict[str, Tensor] | None, *, seed: int) -> None:
    """Round every Linear of the predictor with ``gptq_weight``, first layer first, each on the inputs the
    already rounded layers produce from a sample of the represented kernels' embeddings."""
    spec = nern.compression["quantize"]
    predictor = nern.predictor
    round_biases_(nern)  # the next layer's inputs see the stored biases
    generator = torch.Generator().manual_seed(seed)
    share = min(1.0, GPTQ_SAMPLES / sum(entry.num_kernels for entry in nern.layers))
    inputs, sizes = [], []
    for entry in nern.layers:
        embeddings = nern.layer_embeddings(entry)
        if share < 1.0:
            count = max(1, round(share * entry.num_kernels))
            embeddings = embeddings[torch.randperm(entry.num_kernels, generator=generator)[:count]]
        inputs.append(embeddings)
        sizes.append(torch.full((embeddings.shape[0],), entry.kernel_size))
    x, kernel_sizes = torch.cat(inputs), torch.cat(sizes)

    def round_linear(name: str, module: nn.Linear, features: Tensor) -> None:
        mask = None if masks is None else masks[name]
        weight = module.weight if mask is None else module.weight * mask
        if features.shape[0]:  # a head without kernels to sample keeps nearest rounding
            weight = gptq_weight(weight, features.T @ features, spec["bits"], spec["group_size"], mask=mask)
        module.weight.copy_(round_weight(weight, spec["bits"], spec["group_size"]))

    for name, module in linear_layers(predictor).items():
        if name.startswith("body."):
            round_linear(name, module, x)
            x = torch.relu(module(x))
    for size in predictor.config.kernel_sizes:
        name = f"heads.{head_name(size)}"
        round_linear(name, predictor.heads[head_name(size)], x[kernel_sizes == size])


@torch.no_grad()
def round_biases_(nern: Nern) -> None:
    """Biases stored as float16 take their stored values before the weights are rounded around them."""
    if nern.compression["quantize"]["bias_dtype"] == "float16":
        for module in linear_layers(nern.predictor).values():
            module.bias.copy_(round_fp16(module.bias))
