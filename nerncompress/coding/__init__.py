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

from .config import ALLOCATIONS, DEFAULT_STEP, CodeConfig
from .finetune import finetune
from .search import Candidate, Stages, code_checkpoint
from .steps import (
    batchnorm_sensitivity,
    coded_keys,
    layer_sensitivity,
    layer_steps,
    quantize_state,
    simplify_batchnorms,
)

__all__ = [
    "ALLOCATIONS", "DEFAULT_STEP", "Candidate", "CodeConfig", "Stages", "batchnorm_sensitivity", "code_checkpoint",
    "coded_keys", "finetune", "layer_sensitivity", "layer_steps", "quantize_state", "simplify_batchnorms",
]
