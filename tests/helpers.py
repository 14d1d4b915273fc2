"""Tiny models and fitted representations shared by the engine tests (no downloads, seconds of CPU)."""

from __future__ import annotations

import torch

from nerncompress.models import get_arch
from nerncompress.training import FitConfig, fit


def tiny_resnet_state_dict(seed: int = 0, depth: int = 8, num_classes: int = 10) -> dict[str, torch.Tensor]:
    """A randomly initialised CIFAR ResNet-8 with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = get_arch("cifar_resnet", depth=depth, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_fit(state_dict=None, **overrides):
    state_dict = state_dict if state_dict is not None else tiny_resnet_state_dict()
    config = FitConfig(**{"hidden": 16, "iters": 30, "batch_size": 256, **overrides})
    return fit(state_dict, config, device="cpu")


def write_random_images(path, count: int, shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0):
    """A labelled .npz of ``count`` random uint8 images (N, H, W, C) with labels 0..9; returns ``path``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (count, *shape), dtype=np.uint8), y=rng.integers(0, 10, count))
    return path


def invoke(*args, env: dict[str, str] | None = None):
    """Run the CLI in-process; ``args`` may be paths. typer 0.29's CliRunner keeps stdout and stderr apart."""
    from typer.testing import CliRunner

    from nerncompress.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, code: int) -> None:
    """The CLI failed with ``code``, printed nothing on stdout and ended stderr with one ``Error:`` line."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ")
    assert "Traceback" not in result.stderr


def rewrite_nern(source, target, edit_document):
    """Copy a format-2 .nern with its JSON document changed by ``edit_document(document)`` (in place); the
    streams stay as they are. Returns ``target``."""
    import json
    import struct
    import zlib

    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    meta_start, meta_end = header["meta"]["data_offsets"]
    streams = body[slice(*header["streams"]["data_offsets"])]
    document = json.loads(zlib.decompress(body[meta_start:meta_end]))
    edit_document(document)
    meta = zlib.compress(json.dumps(document).encode())
    header["meta"] = {"dtype": "U8", "shape": [len(meta)], "data_offsets": [0, len(meta)]}
    header["streams"] = {"dtype": "U8", "shape": [len(streams)], "data_offsets": [len(meta), len(meta) + len(streams)]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + meta + streams)
    return target
