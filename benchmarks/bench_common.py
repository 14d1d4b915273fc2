"""Pieces shared by the benchmark scripts (run.py, nncodec_sweep.py): the test images, the fp32 reference file
whose bytes are the denominator of every file ratio, and the facts a results file records about its run."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from nerncompress.data import ImageData, load_data
from nerncompress.safetensors_io import save_safetensors

ROOT = Path(__file__).resolve().parents[1]
QUICK_JPEG_IMAGES = 2000  # quick mode evaluates the paired figures on every 5th image of test10k_jpeg only


def load_test_sets(data_dir: Path, *, quick: bool = False) -> tuple[ImageData, ImageData]:
    """``test1000_lossless`` (absolute top-1) and ``test10k_jpeg`` (paired figures; in quick mode an evenly strided
    subset: the file is sorted by class, so its first images would be two classes only)."""
    lossless = load_data(data_dir / "cifar10" / "test1000_lossless.npz")
    jpeg = load_data(data_dir / "cifar10" / "test10k_jpeg.npz")
    if quick:
        jpeg = jpeg.subset(torch.arange(0, len(jpeg), max(1, len(jpeg) // QUICK_JPEG_IMAGES)))
    return lossless, jpeg


def save_fp32_reference(state_dict: dict[str, torch.Tensor], path: Path) -> int:
    """Save ``state_dict`` as a plain fp32 safetensors file (float tensors in float32) and return its bytes."""
    float_sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_safetensors(float_sd.items(), path, specs=[(k, v.dtype, tuple(v.shape)) for k, v in float_sd.items()])
    return path.stat().st_size


def git_commit() -> str:
    """The project's current commit, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_device() -> str:
    """The device string of a CPU run, e.g. ``CPU (x86_64, 2 cores)``."""
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
