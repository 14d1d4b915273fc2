"""The CLI through typer's CliRunner (stdout, stderr and exit code checked separately) and as a real process."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, invoke, tiny_resnet_state_dict, write_random_images
from safetensors.torch import load_file

from nerncompress import __version__
from nerncompress.cli.output import exit_code_for, in_flags
from nerncompress.errors import (
    AccuracyTargetMissed,
    ArtifactError,
    CheckpointError,
    DataError,
    ExportCheckError,
    NernError,
    UsageError,
)
from nerncompress.models import get_arch

# The jobs the commands call: patched to make a command fail in a chosen way.
jobs = importlib.import_module("nerncompress.jobs")
ROOT = Path(__file__).resolve().parents[1]
FAST_FIT = ["--iters", "20", "--hidden", "16", "--batch-size", "256", "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny CIFAR ResNet-8 checkpoint, a .nern fitted from it through the CLI, and a 16-image .npz."""
    folder = tmp_path_factory.mktemp("cli")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    data = folder / "images.npz"
    write_random_images(data, 16)
    nern = folder / "tiny.nern"
    result = invoke("fit", checkpoint, *FAST_FIT, "-o", nern)
    assert result.exit_code == 0, result.stderr
    return {"folder": folder, "checkpoint": checkpoint, "nern": nern, "data": data}


# --------------------------------------------------------------------------------------------------------- fit
def test_fit_json_goes_to_stdout_and_logs_to_stderr(workspace, tmp_path):
    out = tmp_path / "model.nern"
    result = invoke("fit", workspace["checkpoint"], *FAST_FIT, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert out.is_file()
    assert summary["path"] == str(out)
    assert summary["file_bytes"] == out.stat().st_size
    assert 0 < summary["conv_ratio"] < 1
    assert summary["file_ratio"] == pytest.approx(summary["file_bytes"] / summary["fp32_reference_bytes"])
    assert summary["steps"] == 20
    assert "rmse" in summary["reconstruction"]
    assert "fit: step 20/20" in result.stderr  # plain progress lines when stderr is not a terminal
    assert "positions: step " in result.stderr  # the positions phase comes first, with its own progress
    assert result.stderr.index("positions: step ") < result.stderr.index("fit: step ")
    assert summary["peak_rss_mb"] > 10  # this process's peak resident memory


def test_fit_default_output_is_next_to_cwd_and_records_provenance(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("fit", workspace["checkpoint"], *FAST_FIT, "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "tiny.nern").is_file()
    for label in ("conv ratio", "file ratio", "fit time"):
        assert label in result.stdout
    report = json.loads(invoke("inspect", tmp_path / "tiny.nern", "--json").stdout)
    assert report["source"]["file"] == "tiny.pt"
    assert report["source"]["tensors"] == len(tiny_resnet_state_dict())
    assert len(report["source"]["sha256"]) == 64
    assert report["history"][-1]["config"]["seed"] == 3


# ------------------------------------------------------------------------------------------------------ expand
def test_expand_safetensors_loads_strictly_with_plain_torch(workspace, tmp_path):
    out = tmp_path / "expanded.safetensors"
    result = invoke("expand", workspace["nern"], "-o", out, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "safetensors"
    assert report["bytes"] == out.stat().st_size
    model = get_arch("cifar_resnet", depth=8, num_classes=10)
    model.load_state_dict(load_file(str(out)), strict=True)


def test_expand_onnx_runs_in_onnxruntime(workspace, tmp_path):
    import onnxruntime

    out = tmp_path / "expanded.onnx"
    result = invoke("expand", workspace["nern"], "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "max |delta|" in result.stdout
    assert "top-1 agreement" in result.stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: np.zeros((2, 3, 32, 32), dtype=np.float32)})[0]
    assert logits.shape == (2, 10)


def test_expand_export_check_failure_exits_4(workspace, tmp_path, monkeypatch):
    def failing_export(*args, **kwargs):
        raise ExportCheckError("ONNX output differs from PyTorch by 0.5")

    monkeypatch.setattr(jobs, "export", failing_export)
    result = invoke("expand", workspace["nern"], "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, 4)
    assert "differs from PyTorch" in result.stderr


def test_expand_rejects_unknown_suffix(workspace, tmp_path):
    assert_one_line_error(invoke("expand", workspace["nern"], "-o", tmp_path / "x.bin"), 2)


# -------------------------------------------------------------------------------------------------------- eval
def test_eval_nern_and_compare_with_checkpoint(workspace):
    result = invoke(
        "eval", workspace["nern"], "--data", workspace["data"], "--compare", workspace["checkpoint"], "--json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 16
    assert 0 <= summary["top1"] <= 100
    assert summary["preset"] == "imagenet"  # the arch's preset
    compare = summary["compare"]
    assert 0 <= compare["agreement"] <= 100
    assert compare["delta_top1"] == pytest.approx(summary["top1"] - compare["top1"])
    paired = ("both_correct", "only_first_correct", "only_second_correct", "both_wrong")
    assert sum(compare[k] for k in paired) == 16
    assert compare["delta_top1_ci95"] >= 0


def test_eval_compare_human_output_shows_the_interval(workspace):
    result = invoke("eval", workspace["nern"], "--data", workspace["data"], "--compare", workspace["checkpoint"])
    assert result.exit_code == 0, result.stderr
    assert "95% interval" in result.stdout
    assert "±" in result.stdout


def test_eval_checkpoint_human_output(workspace):
    result = invoke("eval", workspace["checkpoint"], "--data", workspace["data"], "--preset", "cifar10")
    assert result.exit_code == 0, result.stderr
    assert "top-1" in result.stdout
    assert "cifar10" in result.stdout
    assert "evaluating" in result.stderr


def test_eval_gate_exits_3_below_the_target_and_0_against_itself(workspace):
    """The CI gate: a file that agrees less than asked fails with exit 3 (figure and threshold in the one-line
    message and in --json); the original against itself passes."""
    original, nern, data = workspace["checkpoint"], workspace["nern"], workspace["data"]
    result = invoke("eval", nern, "--data", data, "--compare", original, "--min-agreement", "99.9", "--json")
    summary = json.loads(result.stdout)
    agreement = summary["compare"]["agreement"]
    assert agreement < 99.9  # a 20-step fit cannot reproduce the original on random images
    assert result.exit_code == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"Error: {summary['gate']['message']}"
    assert f"agreement {agreement:.2f}% < 99.9%" in result.stderr
    assert summary["gate"] == {**summary["gate"], "passed": False, "min_agreement": 99.9, "agreement": agreement}
    result = invoke("eval", original, "--data", data, "--compare", original, "--min-agreement", "99.9",
                    "--max-drop", "0")
    assert result.exit_code == 0, result.stderr
    assert "accuracy target met" in result.stdout
    drop = invoke("eval", nern, "--data", data, "--compare", original, "--max-drop", "100", "--json")
    assert drop.exit_code == 0 and json.loads(drop.stdout)["gate"]["passed"]


def test_eval_gate_needs_a_reference(workspace):
    result = invoke("eval", workspace["nern"], "--data", workspace["data"], "--min-agreement", "90")
    assert_one_line_error(result, 2)
    assert "compare" in result.stderr


def test_eval_gate_in_a_real_process(workspace):
    """What a CI pipeline sees: the exit status of the program."""
    command = [sys.executable, "-m", "nerncompress", "eval", str(workspace["nern"]), "--data", str(workspace["data"]),
               "--compare", str(workspace["checkpoint"]), "--min-agreement", "99.9"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 3, process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith("Error: accuracy target missed")


def test_eval_missing_data_exits_1(workspace, tmp_path):
    result = invoke("eval", workspace["checkpoint"], "--data", tmp_path / "nothing.npz")
    assert_one_line_error(result, 1)


def _image_tree(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """An ImageFolder tree of random PNGs of the given (H, W) sizes in three class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        path = root / f"class{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def test_eval_streams_an_image_folder_tree_with_workers(workspace, tmp_path):
    uniform = _image_tree(tmp_path / "uniform", [(32, 32)] * 12)
    result = invoke("eval", workspace["checkpoint"], "--data", uniform, "--workers", "2", "--batch-size", "5",
                    "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 12 and summary["data"] == str(uniform)
    mixed = _image_tree(tmp_path / "mixed", [(32, 32), (40, 56), (64, 36), (33, 33)])
    args = ["eval", workspace["checkpoint"], "--data", mixed, "--image-size", "32", "--workers", "2", "--device", "cpu"]
    assert invoke(*args).exit_code == 0
    (mixed / "class1" / "001.png").write_bytes(b"damaged")
    result = invoke(*args)
    assert_one_line_error(result, 1)
    assert f"{mixed / 'class1' / '001.png'}: cannot read image" in result.stderr
    assert_one_line_error(invoke(*args[:-4], "--workers", "0"), 2)


def test_distill_on_an_image_folder_tree(workspace, tmp_path):
    """The held-out share of a streamed tree is decoded once and scored; training draws decode batch by batch."""
    tree = _image_tree(tmp_path / "tree", [(32, 32)] * 24)
    result = invoke("distill", workspace["nern"], "--teacher", workspace["checkpoint"], "--data", tree,
                    "--workers", "2", "--iters", "2", "--batch-size", "4", "--holdout", "0.25", "--eval-every", "1",
                    "--device", "cpu", "-o", tmp_path / "d.nern", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["holdout_agreement"] is not None and (tmp_path / "d.nern").is_file()


# ------------------------------------------------------------------------------------------------------ select
def test_select_keeps_the_most_faithful_candidate_and_copies_it(workspace, tmp_path):
    # The reference itself agrees 100% with the reference: it must win from any position, over the fitted .nern.
    data = write_random_images(tmp_path / "train.npz", 40, seed=3)
    for candidates, winner in [((workspace["nern"], workspace["checkpoint"]), 1), ((workspace["checkpoint"], workspace["nern"]), 0)]:
        out = tmp_path / f"best{winner}"
        result = invoke("select", *candidates, "--reference", workspace["checkpoint"], "--data", data, "-o", out, "--json")
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["images"] == 4  # distill's held-out 10% of 40 images
        assert summary["selected_index"] == winner and summary["selected"] == str(candidates[winner])
        assert summary["candidates"][winner]["agreement"] == 100.0
        assert out.read_bytes() == Path(candidates[winner]).read_bytes()


def test_select_scores_distills_holdout_or_every_image(workspace, tmp_path):
    """--holdout and --holdout-seed pick the images distill held out; --holdout 0 scores them all."""
    from nerncompress.data import load_data, split_holdout

    data = write_random_images(tmp_path / "train.npz", 40, seed=3)
    args = ("select", workspace["nern"], workspace["nern"], "--reference", workspace["checkpoint"], "--data", data)
    every = json.loads(invoke(*args, "--holdout", "0", "-o", tmp_path / "a", "--json").stdout)
    assert every["images"] == 40 and every["selected_index"] == 0  # a tie keeps the first
    held = json.loads(invoke(*args, "--holdout", "0.5", "--holdout-seed", "4", "-o", tmp_path / "b", "--json").stdout)
    assert held["images"] == 20
    human = invoke(*args, "-o", tmp_path / "c")
    assert human.exit_code == 0 and "selected" in human.stdout and "agreement" in human.stdout
    assert "[holdout part]" in " ".join(human.stdout.split())  # printed as text, not taken for rich markup
    # the held-out part of split_holdout, the function distill splits with
    hold = split_holdout(load_data(data, split="train"), fraction=0.5, seed=4)[1]
    assert held["data"] == hold.source


@pytest.mark.parametrize(
    "extra, code",
    [
        (["--data", "noise"], 2),  # no real images to score on
        (["--data", "missing.npz"], 1),
    ],
)
def test_select_refuses_bad_input_without_writing(workspace, tmp_path, extra, code):
    out = tmp_path / "best.nern"
    result = invoke("select", workspace["nern"], workspace["checkpoint"], "--reference", workspace["checkpoint"],
                    *extra, "-o", out)  # fmt: skip
    assert_one_line_error(result, code)
    assert not out.exists()


def test_select_needs_two_candidates_and_a_new_output(workspace, tmp_path):
    data = write_random_images(tmp_path / "train.npz", 20)
    one = invoke("select", workspace["nern"], "--reference", workspace["checkpoint"], "--data", data, "-o", tmp_path / "x")
    assert_one_line_error(one, 2)
    over = invoke("select", workspace["nern"], workspace["checkpoint"], "--reference", workspace["checkpoint"],
                  "--data", data, "-o", workspace["nern"])  # fmt: skip
    assert_one_line_error(over, 2)


# ----------------------------------------------------------------------------------------------------- inspect
def test_inspect_nern_prints_ratios_and_tables(workspace):
    result = invoke("inspect", workspace["nern"])
    assert result.exit_code == 0, result.stderr
    for label in ("conv ratio", "file ratio", "tensors", "bytes on disk", "predictor", "positions", "history"):
        assert label in result.stdout
    report = json.loads(invoke("inspect", workspace["nern"], "--json").stdout)
    assert report["kind"] == "nern"
    assert sum(report["bytes"].values()) == workspace["nern"].stat().st_size


def test_inspect_checkpoint(workspace):
    result = invoke("inspect", workspace["checkpoint"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "checkpoint"
    assert report["arch"]["name"] == "cifar_resnet"


# ----------------------------------------------------------------------------------------------- env, help, version
def test_env():
    result = invoke("env")
    assert result.exit_code == 0
    assert "torch" in result.stdout and "onnxruntime" in result.stdout
    data = json.loads(invoke("env", "--json").stdout)
    assert data["versions"]["nerncompress"] == __version__
    assert data["cuda"]["available"] == torch.cuda.is_available()


def test_help_lists_commands_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("fit", "expand", "eval", "inspect", "env", "demo"):
        assert command in result.stdout
    assert invoke("--version").stdout.strip() == f"nerncompress {__version__}"
    fit_help = invoke("fit", "--help").stdout
    for panel in ("Predictor", "Training", "Output", "Examples"):
        assert panel in fit_help


# ------------------------------------------------------------------------------------------------------ errors
def test_missing_checkpoint_exits_1_with_one_line(tmp_path):
    result = invoke("fit", tmp_path / "missing.pt", *FAST_FIT, "-o", tmp_path / "x.nern")
    assert_one_line_error(result, 1)
    assert "missing.pt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_permute_is_a_usage_error(workspace):
    result = invoke("fit", workspace["checkpoint"], "--permute", "sideways")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "sideways" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_usage_error(workspace):
    result = invoke("fit", workspace["checkpoint"], "--device", "cuda")
    assert result.exit_code == 2
    assert "CUDA" in result.stderr
    result = invoke("eval", workspace["checkpoint"], "--data", workspace["data"], "--device", "cuda:3")
    assert result.exit_code == 2


def test_output_equal_to_input_is_a_usage_error(workspace):
    result = invoke("fit", workspace["checkpoint"], *FAST_FIT, "-o", workspace["checkpoint"])
    assert_one_line_error(result, 2)
    result = invoke("expand", workspace["nern"], "-o", workspace["nern"])
    assert_one_line_error(result, 2)


def test_invalid_fit_config_is_a_usage_error(workspace, tmp_path):
    result = invoke("fit", workspace["checkpoint"], "--lr", "0", "-o", tmp_path / "x.nern")
    assert_one_line_error(result, 2)
    assert "--lr" in result.stderr


def test_corrupt_nern_exits_1(tmp_path):
    corrupt = tmp_path / "corrupt.nern"
    corrupt.write_bytes(b"\x00" * 7 + b"garbage garbage garbage")
    assert_one_line_error(invoke("inspect", corrupt), 1)
    assert_one_line_error(invoke("expand", corrupt, "-o", tmp_path / "x.safetensors"), 1)
    assert_one_line_error(invoke("eval", corrupt, "--data", "digits"), 1)


def test_debug_variable_shows_the_traceback(tmp_path):
    result = invoke("inspect", tmp_path / "missing.nern", env={"NERNCOMPRESS_DEBUG": "1"})
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_unexpected_errors_and_interrupts_are_mapped(workspace, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "artifact_report", broken)
    result = invoke("inspect", workspace["nern"])
    assert_one_line_error(result, 1)
    assert "unexpected RuntimeError: boom" in result.stderr

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "artifact_report", interrupted)
    result = invoke("inspect", workspace["nern"])
    assert result.exit_code == 130
    assert "Error: interrupted" in result.stderr


def test_exit_code_table():
    assert exit_code_for(UsageError("x")) == 2
    assert exit_code_for(AccuracyTargetMissed("x")) == 3
    assert exit_code_for(ExportCheckError("x")) == 4
    for error in (CheckpointError, ArtifactError, DataError, NernError, ValueError):
        assert exit_code_for(error("x")) == 1
    assert exit_code_for(KeyboardInterrupt()) == 130


# -------------------------------------------------------------------------------------------------------- demo
def test_demo_quick_run(tmp_path):
    workdir = tmp_path / "demo"
    result = invoke(
        "demo", "--workdir", workdir, "--iters", "30", "--hidden", "16", "--train-epochs", "1", "--device", "cpu",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    for name in ("original", "nern", "safetensors", "onnx", "coded"):
        assert Path(summary["files"][name]).is_file()
    coded = summary["coded"]
    assert coded["bytes"] == (workdir / "digits_cnn.coded.nern").stat().st_size < summary["original"]["bytes"]
    assert 0 <= coded["agreement"] <= 100 and 0 < coded["file_ratio"] < 1
    assert 0 <= summary["original"]["top1"] <= 100 and 0 <= summary["expanded"]["top1"] <= 100
    assert summary["original"]["bytes"] == (workdir / "digits_cnn.safetensors").stat().st_size
    assert summary["nern"]["bytes"] == (workdir / "digits_cnn.nern").stat().st_size
    assert summary["onnx"]["top1_agreement"] == 100.0
    assert summary["data"]["test_images"] > 0
    assert "training the digits CNN" in result.stderr


@pytest.mark.slow  # about 40 s; run with: pytest -m slow
def test_demo_full_run_keeps_accuracy(tmp_path):
    result = invoke("demo", "--workdir", tmp_path / "demo", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["original"]["top1"] > 95
    assert summary["expanded"]["top1"] > summary["original"]["top1"] - 3
    assert summary["nern"]["conv_ratio"] < 0.5
    # compress's target is 99% on held-out training digits; the test digits land close to it
    assert summary["coded"]["agreement"] > 97 and summary["coded"]["file_ratio"] < 0.1


# -------------------------------------------------------------------------------------------- real processes
def run_module(*args: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("NERNCOMPRESS_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "nerncompress", *(str(a) for a in args)],
        capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_process_usage_error_exits_2():
    bad = run_module("fit", "whatever.pt", "--permute", "sideways")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "sideways" in bad.stderr


def test_process_error_is_one_line_and_json_is_clean(tmp_path, workspace):
    missing = run_module("inspect", tmp_path / "missing.nern")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert missing.stderr.startswith("Error: ")
    report = run_module("inspect", workspace["nern"], "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["kind"] == "nern"


def test_library_messages_are_worded_in_flags():
    flags = {"lr": "--lr", "ema_decay": "--ema", "finetune_iters": "--finetune-iters", "data": "--data"}
    assert in_flags("lr must be > 0, got 0.0", flags) == "--lr must be > 0, got 0.0"
    assert in_flags("ema_decay must be in [0, 1)", flags) == "--ema must be in [0, 1)"
    # plain-English words and words inside paths stay as written
    assert in_flags("give data; finetune_iters >= 1", flags) == "give data; --finetune-iters >= 1"
    assert in_flags("no file /tmp/lr_x/data.npz", flags) == "no file /tmp/lr_x/data.npz"
