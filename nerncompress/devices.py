"""Turning ``--device auto|cpu|cuda[:N]`` into a ``torch.device``, with a clear error when it is unavailable."""

from __future__ import annotations

import re

import torch

from .errors import UsageError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device string; ``auto`` means CUDA when present, else CPU.

    Raises:
        UsageError: for an unknown string or a CUDA device that this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not _DEVICE_PATTERN.match(device):
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} requested but no CUDA GPU is available: use the CPU (device='cpu', --device cpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return torch.device(device)
