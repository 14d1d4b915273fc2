"""The example script runs end to end on a tiny model."""

import runpy
import sys
from pathlib import Path

import torch

from helpers import tiny_resnet_state_dict, write_random_images

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compress_checkpoint.py"


def test_compress_checkpoint_example(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_resnet_state_dict()}, checkpoint)
    data = tmp_path / "images.npz"
    write_random_images(data, 40)
    argv = [str(EXAMPLE), str(checkpoint), "--train", str(data), "--test", str(data), "--hidden", "16",
            "--fit-iters", "20", "--distill-iters", "2", "--qat-iters", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "compressed_top1" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
