"""quantize and prune through the CLI; distill refusing a compressed .nern; --trust-code for user builders; bounds
on the architecture a .nern may ask for. Everything on a ResNet-8 with a 16-wide predictor: seconds of CPU."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import rewrite_nern, assert_one_line_error, invoke, tiny_resnet_state_dict, write_random_images
from safetensors.torch import load_file

from nerncompress import distillation
from nerncompress.artifact import load_artifact
from nerncompress.errors import UsageError
from nerncompress.models import get_arch

FAST_FIT = ["--iters", "20", "--hidden", "16", "--batch-size", "256", "--device", "cpu"]
CPU = ["--device", "cpu"]


def edit_arch(source: Path, target: Path, **changes) -> Path:
    """Copy a .nern with its arch spec changed (e.g. kwargs=...); the streams stay as they are."""
    return rewrite_nern(source, target, lambda document: document["arch"].update(changes))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """A ResNet-8 checkpoint, a .nern fitted from it, its int8 and pruned versions, and 16 images."""
    folder = tmp_path_factory.mktemp("compress")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    images = folder / "images.npz"
    write_random_images(images, 16)
    nern = folder / "tiny.nern"
    assert invoke("fit", checkpoint, *FAST_FIT, "-o", nern).exit_code == 0
    quantized = folder / "tiny.int8.nern"
    result = invoke("quantize", nern, "--bits", "8", "--qat-iters", "5", *CPU, "-o", quantized, "--json")
    assert result.exit_code == 0, result.stderr
    pruned = folder / "tiny.pruned.nern"
    pruned_result = invoke("prune", nern, "--sparsity", "0.5", "--finetune-iters", "5", *CPU, "-o", pruned, "--json")
    assert pruned_result.exit_code == 0, pruned_result.stderr
    return {
        "folder": folder, "checkpoint": checkpoint, "images": images, "nern": nern, "quantized": quantized,
        "pruned": pruned, "quantize_json": json.loads(result.stdout), "prune_json": json.loads(pruned_result.stdout),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- quantize
def test_quantize_json_reports_bytes_before_and_after(ws):
    summary = ws["quantize_json"]
    assert summary["stage"] == "quantize"
    assert summary["file_bytes_before"] == ws["nern"].stat().st_size
    assert summary["file_bytes_after"] == summary["file_bytes"] == ws["quantized"].stat().st_size
    assert summary["file_bytes_after"] < summary["file_bytes_before"]
    assert summary["predictor_bytes_after"] < summary["predictor_bytes_before"]
    assert summary["file_ratio"] == pytest.approx(summary["file_bytes"] / summary["fp32_reference_bytes"])
    assert summary["file_ratio"] < summary["file_ratio_before"]
    assert summary["compression"]["quantize"]["bits"] == 8
    assert set(summary["reconstruction"]) >= {"before", "naive", "after"}
    assert summary["reconstruction"]["before"]["rmse"] == 0  # targets: the input's own weights
    assert summary["targets"] == "self"
    assert summary["steps"] == 5 and summary["seconds"] >= 0


def test_quantize_default_output_and_table(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("quantize", ws["nern"], "--bits", "4", "--group-size", "8", "--qat-iters", "0", *CPU)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "tiny.int4.nern").is_file()
    for label in ("4 bits", "size", "predictor bytes", "file ratio", "conv ratio", "RMSE after"):
        assert label in result.stdout
    learned = invoke(
        "quantize", ws["nern"], "--rounding", "learned", "--rounding-iters", "20", "--qat-iters", "10", *CPU,
        "-o", tmp_path / "learned.nern",
    )  # fmt: skip
    assert learned.exit_code == 0, learned.stderr
    assert "RMSE after learned rounding" in learned.stdout
    log = " ".join(learned.stderr.split())  # the log wraps long lines
    assert "20 learned-rounding steps + 10 recon steps" in log and "step 30/30" in log  # one count, both phases
    fp16 = invoke("quantize", ws["nern"], "--bits", "fp16", "--qat-iters", "0", "--original", ws["checkpoint"], *CPU)
    assert fp16.exit_code == 0, fp16.stderr
    report = json.loads(invoke("inspect", tmp_path / "tiny.fp16.nern", "--json").stdout)
    assert report["history"][-1]["targets"] == "given"


# ------------------------------------------------------------------------------------------------------- prune
def test_prune_shrinks_the_file(ws):
    summary = ws["prune_json"]
    assert summary["stage"] == "prune"
    assert summary["file_bytes_after"] < summary["file_bytes_before"]
    assert summary["achieved_sparsity"] == pytest.approx(0.5)
    assert summary["compression"]["prune"] == {"sparsity": 0.5, "scope": "global"}


def test_prune_then_quantize_then_expand_loads_strictly(ws, tmp_path):
    both = tmp_path / "both.nern"
    result = invoke("quantize", ws["pruned"], "--qat-iters", "2", *CPU, "-o", both, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["file_bytes_after"] < ws["pruned"].stat().st_size
    expanded = tmp_path / "x.safetensors"
    assert invoke("expand", both, "-o", expanded, *CPU).exit_code == 0
    get_arch("cifar_resnet", depth=8, num_classes=10).load_state_dict(load_file(str(expanded)), strict=True)
    shown = invoke("inspect", both)
    assert shown.exit_code == 0, shown.stderr
    assert "8 bits" in shown.stdout and "pruned" in shown.stdout


def test_structured_prune_with_kd_phase(ws, tmp_path):
    out = tmp_path / "narrow.nern"
    result = invoke(
        "prune", ws["nern"], "--method", "structured", "--sparsity", "0.25", "--finetune-iters", "1", "--kd-iters",
        "1", "--data", ws["images"], "--teacher", ws["checkpoint"], *CPU, "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["data"].endswith("images.npz")
    assert sum(summary["widths_after"]) < sum(summary["widths_before"])


def test_gradual_prune(ws, tmp_path):
    out = tmp_path / "gradual.nern"
    result = invoke("prune", ws["nern"], "--schedule", "gradual", "--finetune-iters", "4", *CPU, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["config"]["schedule"] == "gradual" and summary["file_bytes_after"] == out.stat().st_size
    assert summary["file_bytes_after"] < summary["file_bytes_before"]
    bad = invoke("prune", ws["nern"], "--schedule", "gradual", "--finetune-iters", "0", "-o", tmp_path / "x.nern")
    assert_one_line_error(bad, 2)
    assert "--schedule gradual" in bad.stderr and not (tmp_path / "x.nern").exists()


def test_compress_usage_errors(ws, tmp_path):
    assert_one_line_error(invoke("quantize", ws["nern"], "-o", ws["nern"]), 2)
    assert_one_line_error(invoke("prune", ws["nern"], "-o", tmp_path / "missing" / "x.nern"), 2)
    assert_one_line_error(invoke("prune", ws["nern"], "-o", tmp_path), 2)
    assert_one_line_error(invoke("quantize", ws["nern"], "--bits", "9", "-o", tmp_path / "x.nern"), 2)
    assert_one_line_error(invoke("prune", ws["nern"], "--sparsity", "1.5", "-o", tmp_path / "x.nern"), 2)
    assert_one_line_error(invoke("quantize", ws["nern"], "--rounding", "up", "-o", tmp_path / "x.nern"), 2)
    assert_one_line_error(invoke("quantize", ws["nern"], "--rounding-iters", "0", "-o", tmp_path / "x.nern"), 2)
    result = invoke("quantize", ws["nern"], "--data", "noise", "-o", tmp_path / "x.nern")
    assert_one_line_error(result, 2)
    assert "--kd-iters" in result.stderr
    assert not (tmp_path / "x.nern").exists()


def test_help_has_panels_and_examples():
    for command in ("quantize", "prune"):
        text = invoke(command, "--help").stdout
        for label in ("Compression", "Training", "Output", "Examples", "--trust-code"):
            assert label in text, (command, label)


# ----------------------------------------------------------------------------------------------------- distill
def test_distill_refuses_a_compressed_nern(ws, tmp_path):
    out = tmp_path / "d.nern"
    result = invoke("distill", ws["quantized"], "--teacher", ws["checkpoint"], "--data", "noise", *CPU, "-o", out)
    assert_one_line_error(result, 2)
    assert "distill before prune/quantize" in result.stderr
    assert not out.exists()
    teacher = get_arch("cifar_resnet", depth=8, num_classes=10)
    with pytest.raises(UsageError, match="distill before prune/quantize.*pruned"):
        distillation.distill(load_artifact(ws["pruned"]), teacher, None, distillation.DistillConfig(iters=1), device="cpu")
    distillation.check_distillable(load_artifact(ws["nern"]))  # a float .nern passes


# ---------------------------------------------------------------------------------------------- trust and bounds
def test_user_builder_needs_trust_code(ws, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    module = "nern_trust_builder"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from nerncompress.models.cifar_resnet import cifar_resnet

            Path({str(marker)!r}).write_text("imported")

            def resnet8():
                return cifar_resnet(depth=8, num_classes=10)

            resnet8.preset = "imagenet"
            resnet8.input_shape = (3, 32, 32)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    user = tmp_path / "user.nern"
    try:
        # --arch typed by the user is trusted: fit imports the builder without --trust-code.
        fitted = invoke("fit", ws["checkpoint"], "--arch", f"{module}:resnet8", *FAST_FIT, "-o", user)
        assert fitted.exit_code == 0, fitted.stderr
        sys.modules.pop(module, None)
        marker.unlink()
        refused = invoke("eval", user, "--data", ws["images"], *CPU)
        assert_one_line_error(refused, 2)
        assert f"{module}:resnet8" in refused.stderr and "--trust-code" in refused.stderr
        assert_one_line_error(invoke("expand", user, "-o", tmp_path / "u.onnx"), 2)
        kd = invoke("quantize", user, "--qat-iters", "1", "--kd-iters", "1", *CPU, "-o", tmp_path / "q.nern")
        assert_one_line_error(kd, 2)
        assert not marker.exists() and module not in sys.modules  # nothing of the file's was run
        # Nothing to build, nothing to trust: expanding to safetensors and quantizing without KD work.
        assert invoke("expand", user, "-o", tmp_path / "u.safetensors", *CPU).exit_code == 0
        assert invoke("quantize", user, "--qat-iters", "1", *CPU, "-o", tmp_path / "q.nern").exit_code == 0
        assert not marker.exists()
        trusted = invoke("eval", user, "--data", ws["images"], *CPU, "--trust-code", "--json")
        assert trusted.exit_code == 0, trusted.stderr
        assert json.loads(trusted.stdout)["count"] == 16
        assert marker.exists()
    finally:
        sys.modules.pop(module, None)


def test_crafted_architecture_kwargs_are_refused(ws, tmp_path):
    deep = edit_arch(ws["nern"], tmp_path / "deep.nern", kwargs={"depth": 6 * 10**6 + 2, "num_classes": 10})
    for args in (("expand", deep, "-o", tmp_path / "x.safetensors"), ("eval", deep, "--data", ws["images"])):
        result = invoke(*args, *CPU)
        assert_one_line_error(result, 1)
        assert "depth" in result.stderr and "out of bounds" in result.stderr
    result = invoke("distill", deep, "--teacher", ws["checkpoint"], "--data", "noise", "-o", tmp_path / "d.nern")
    assert_one_line_error(result, 1)
    huge = edit_arch(ws["nern"], tmp_path / "huge.nern", input_shape=[3, 100000, 100000])
    assert_one_line_error(invoke("eval", huge, "--data", ws["images"], *CPU), 1)
    assert invoke("inspect", deep).exit_code == 0  # reading the file builds nothing
