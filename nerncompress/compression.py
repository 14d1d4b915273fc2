"""Compressing the predictor itself: how its parameters are encoded in the artifact.

``encode_predictor`` / ``decode_predictor`` are the only functions that know how predictor parameters are
stored; ``artifact.py`` calls them. With an empty compression state the parameters are stored as float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import ArtifactError
from .predictor import Predictor, PredictorConfig


def encode_predictor(predictor: Predictor, state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors that store the predictor, and the compression metadata describing them."""
    if state:
        raise NotImplementedError(f"compression state {sorted(state)} is not supported yet")
    tensors = {name: value.detach().to(torch.float32) for name, value in predictor.state_dict().items()}
    return tensors, {}


def decode_predictor(tensors: dict[str, Tensor], config: PredictorConfig, state: dict[str, Any]) -> Predictor:
    """Rebuild the predictor from its stored tensors.

    Raises:
        ArtifactError: a missing, extra or mis-shaped parameter, or NaN/Inf values.
    """
    if state:
        raise ArtifactError(f"compression state {sorted(state)} is not supported by this version")
    predictor = Predictor(config)
    expected = predictor.state_dict()
    for name, reference in expected.items():
        key = f"predictor/{name}"
        if name not in tensors:
            raise ArtifactError(f"tensor {key!r} is missing")
        value = tensors[name]
        if value.dtype != torch.float32 or value.shape != reference.shape:
            raise ArtifactError(
                f"tensor {key!r} is {value.dtype} {tuple(value.shape)}, expected float32 {tuple(reference.shape)}"
            )
        if not torch.isfinite(value).all():
            raise ArtifactError(f"tensor {key!r} holds NaN or Inf")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ArtifactError(f"unexpected tensor 'predictor/{extra[0]}'")
    predictor.load_state_dict({k: tensors[k] for k in expected})
    return predictor.eval()
