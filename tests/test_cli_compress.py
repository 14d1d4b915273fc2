"""``nerncompress compress``: through Typer's runner and as a process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, invoke, tiny_resnet_state_dict, write_random_images
from nerncompress.artifact import load_artifact

FAST = ["--stage-iters", "2", "--stages", "1", "--device", "cpu", "--holdout", "0.25"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compress")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    return {"folder": folder, "checkpoint": checkpoint, "images": write_random_images(folder / "images.npz", 40)}


def test_data_free_compress_writes_a_coded_nern(ws, tmp_path):
    out = tmp_path / "coded.nern"
    result = invoke("compress", ws["checkpoint"], "--step", "0.05", "-o", out, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["file_bytes"] == out.stat().st_size and summary["data"] is None
    assert 0 < summary["file_ratio"] < 0.5 and summary["chosen"]["coarseness"] == pytest.approx(0.05)
    nern = load_artifact(out)
    assert nern.predictor is None and nern.codes
    human = invoke("compress", ws["checkpoint"], "--step", "0.05", "-o", tmp_path / "b.nern", "--device", "cpu")
    assert human.exit_code == 0 and "file ratio" in human.stdout and "data-free" in human.stdout


def test_hidden_offers_a_predictor_and_records_each_layers_choice(ws, tmp_path):
    out = tmp_path / "hybrid.nern"
    args = ["--step", "0.05", "--hidden", "8", "--fit-iters", "5", "--device", "cpu", "--json", "-o", out]
    result = invoke("compress", ws["checkpoint"], *args)
    assert result.exit_code == 0, result.stderr
    hybrid = json.loads(result.stdout)["hybrid"]
    assert set(hybrid) >= {"layers", "predictor_used", "predictor_bytes"} and hybrid["layers"]
    assert all({"plain", "residual", "predictor"} <= set(row) for row in hybrid["layers"].values())
    assert (load_artifact(out).predictor is not None) == hybrid["predictor_used"]
    human = invoke("compress", ws["checkpoint"], *args[:-3], "-o", tmp_path / "h.nern")
    assert human.exit_code == 0 and "predictor" in human.stdout and "layers" in human.stdout


def test_compress_to_a_target_shows_the_candidates(ws, tmp_path):
    out = tmp_path / "target.nern"
    result = invoke("compress", ws["checkpoint"], "--data", ws["images"], "--min-agreement", "0", *FAST, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "candidates" in result.stdout and "accuracy target met" in result.stdout
    assert "search without fine-tuning" in result.stderr  # progress of each phase on stderr


def test_compress_to_a_target_on_an_image_folder_tree(ws, tmp_path):
    """The search's held-out share of a streamed tree is decoded once; sensitivity draws decode batch by batch."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(16):
        path = tmp_path / "tree" / f"class{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    result = invoke("compress", ws["checkpoint"], "--data", tmp_path / "tree", "--workers", "2", "--min-agreement",
                    "0", *FAST, "-o", tmp_path / "tree.nern", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["data"] == f"{tmp_path / 'tree'}[train part]" and summary["gate"]["passed"]


def test_an_unmet_target_still_writes_the_closest_file_and_exits_3(ws, tmp_path, monkeypatch):
    from nerncompress.gate import AccuracyGate

    original_check = AccuracyGate.check

    def never_met(self, agreement, drop, *, on):  # a tiny random model agrees with itself too easily
        return {**original_check(self, agreement, drop, on=on), "passed": False, "message": f"target missed on {on}"}

    monkeypatch.setattr(AccuracyGate, "check", never_met)
    out = tmp_path / "closest.nern"
    result = invoke("compress", ws["checkpoint"], "--data", ws["images"], "--min-agreement", "90", *FAST, "-o", out,
                    "--json")  # fmt: skip
    assert result.exit_code == 3
    summary = json.loads(result.stdout)
    assert out.is_file() and summary["gate"]["passed"] is False and summary["target_met"] is False
    assert str(out) in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args",
    [
        ["--min-agreement", "95"],  # a target needs training images
        ["--data", "noise", "--min-agreement", "95"],
        ["--step", "-1"],
        ["--allocation", "random"],
        ["--min-agreement", "101", "--data", "IMAGES"],
    ],
    ids=["target-without-data", "target-on-noise", "negative-step", "unknown-allocation", "agreement-over-100"],
)
def test_bad_options_are_one_line_usage_errors(ws, tmp_path, args):
    args = [str(ws["images"]) if arg == "IMAGES" else arg for arg in args]
    out = tmp_path / "x.nern"
    assert_one_line_error(invoke("compress", ws["checkpoint"], *args, "-o", out), 2)
    assert not out.exists()


def test_compress_as_a_process(ws, tmp_path):
    out = tmp_path / "process.nern"
    command = [sys.executable, "-m", "nerncompress", "compress", str(ws["checkpoint"]), "--step", "0.05", "-o",
               str(out), "--json", "--device", "cpu"]  # fmt: skip
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["file_bytes"] == out.stat().st_size
