"""report.py: byte breakdowns that add up, ratios that match their definitions, checkpoint and env reports."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from helpers import tiny_fit, tiny_resnet_state_dict
from safetensors.torch import save_file

from nerncompress.errors import ArtifactError, CheckpointError
from nerncompress.evaluation import EvalResult
from nerncompress.report import (
    artifact_report,
    checkpoint_report,
    compare_results,
    environment_report,
    fit_summary,
    paired_delta_ci95,
    source_provenance,
)
from nerncompress.artifact import is_nern_file, predictor_bytes, save_artifact
from nerncompress.safetensors_io import read_safetensors_header


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny fitted Nern (conv1 kept raw, so the table has a raw conv row) and its file."""
    nern = tiny_fit(raw_layers=("conv1.weight",), iters=20)
    path = tmp_path_factory.mktemp("report") / "tiny.nern"
    save_artifact(nern, path)
    return nern, path


def test_byte_breakdown_sums_to_file_size(fitted):
    nern, path = fitted
    report = artifact_report(path)
    assert report["file_bytes"] == path.stat().st_size
    assert sum(report["bytes"].values()) == report["file_bytes"]
    assert sum(report["streams"].values()) == report["file_bytes"]
    assert report["bytes"]["other"] == 0 and report["bytes"]["codes"] == 0
    assert report["bytes"]["predictor"] == predictor_bytes(nern.predictor, {})
    bound = sum(math.lgamma(e.num_kernels + 1) / math.log(2) / 8 for e in nern.layers)
    assert bound <= report["bytes"]["positions"] <= 1.05 * bound + 8 * len(nern.layers)
    raw_bytes = sum(v.numel() * v.element_size() for v in nern.raw.values())
    assert 0 < report["bytes"]["raw"] < raw_bytes
    header_bytes, header = read_safetensors_header(path)
    assert report["bytes"]["header"] > header_bytes  # the compressed structure counts as header
    assert header["__metadata__"]["format"] == "nern"


def test_ratios_match_their_definitions(fitted):
    nern, path = fitted
    report = artifact_report(path)
    predictor_params = sum(p.numel() for p in nern.predictor.parameters())
    conv_params = sum(e.num_weights for e in nern.layers)
    assert report["predictor_parameters"] == predictor_params
    assert report["conv_parameters"] == conv_params
    assert report["conv_ratio"] == pytest.approx(predictor_params / conv_params)
    assert report["file_ratio"] == pytest.approx(report["file_bytes"] / report["fp32_reference_bytes"])


def test_fp32_reference_is_the_size_of_a_plain_safetensors_file(fitted, tmp_path):
    nern, path = fitted
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in tiny_resnet_state_dict().items()}
    reference = tmp_path / "reference.safetensors"
    save_file(state_dict, str(reference))
    # Same tensors; headers differ by a few bytes of key order and padding at most.
    assert artifact_report(path)["fp32_reference_bytes"] == pytest.approx(reference.stat().st_size, abs=64)


def test_tensor_table_says_how_each_tensor_is_stored(fitted):
    nern, path = fitted
    report = artifact_report(path)
    rows = {row["name"]: row for row in report["tensors"]}
    assert list(rows) == nern.key_order
    represented = [name for name, row in rows.items() if row["storage"] == "predicted"]
    assert represented == [e.name for e in nern.layers]
    assert rows["conv1.weight"]["storage"] == "raw" and "request" in rows["conv1.weight"]["reason"]
    first = rows[nern.layers[0].name]
    assert first["shape"] == list(nern.layers[0].shape) and first["kernel_size"] == 3
    assert first["bytes"] == report["streams"][f"positions/{nern.layers[0].name}"]
    assert rows["bn1.weight"]["bytes"] == report["streams"]["raw/bn1.weight"]
    assert rows["bn1.weight"]["bits_per_value"] == pytest.approx(8 * rows["bn1.weight"]["bytes"] / 16, abs=1e-3)
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert report["shares"]["represented"] > 0.5 and report["warnings"] == []


def test_a_mostly_raw_model_gets_a_warning(tmp_path):
    nern = tiny_fit(raw_layers=("layer2.0.conv2.weight", "layer3.0.conv1.weight", "layer3.0.conv2.weight"), iters=2)
    path = tmp_path / "raw.nern"
    save_artifact(nern, path)
    report = artifact_report(path)
    assert report["shares"]["raw"] > 0.5
    assert "stored raw" in report["warnings"][0]


def test_report_carries_provenance_and_history(fitted):
    _, path = fitted
    report = artifact_report(path)
    assert report["arch"]["name"] == "cifar_resnet"
    assert report["history"][-1]["stage"] == "fit"
    assert report["predictor"]["hidden"] == 16
    assert report["embedding"]["dim"] == 6 * report["embedding"]["levels"]
    assert report["permute"] == "crossfilter"


def test_fit_summary_agrees_with_artifact_report(fitted):
    nern, path = fitted
    summary = fit_summary(nern, path, seconds=1.5)
    report = artifact_report(path)
    for key in ("file_bytes", "conv_ratio", "file_ratio", "predictor_parameters", "conv_parameters"):
        assert summary[key] == pytest.approx(report[key])
    assert summary["seconds"] == 1.5
    assert set(summary["reconstruction"]) >= {"rmse", "relative_rmse"}


def test_artifact_report_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "bad.nern"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ArtifactError):
        artifact_report(bad)
    with pytest.raises(ArtifactError):
        read_safetensors_header(bad)
    with pytest.raises(ArtifactError):
        artifact_report(tmp_path / "missing.nern")


def test_is_nern_file_by_suffix_or_header(fitted, tmp_path):
    _, path = fitted
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(path.read_bytes())
    checkpoint = tmp_path / "model.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    assert is_nern_file(path)
    assert is_nern_file(renamed)
    assert not is_nern_file(checkpoint)
    assert not is_nern_file(tmp_path / "missing.pt")


def test_checkpoint_report_counts_and_detects(tmp_path):
    state_dict = tiny_resnet_state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(state_dict, path)
    report = checkpoint_report(path)
    assert report["tensors"] == len(state_dict)
    assert report["parameters"] == sum(v.numel() for v in state_dict.values())
    assert report["tensor_bytes"] == sum(v.numel() * v.element_size() for v in state_dict.values())
    assert report["arch"]["name"] == "cifar_resnet"
    assert report["arch"]["kwargs"]["depth"] == 8
    assert report["arch_error"] is None
    assert report["conv_weights"] == 7
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_report_explains_unknown_architectures(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"weird.weight": torch.zeros(3, 3)}, path)
    report = checkpoint_report(path)
    assert report["arch"] is None
    assert report["arch_error"]
    with pytest.raises(CheckpointError):
        checkpoint_report(tmp_path / "missing.pt")


def test_source_provenance(tmp_path):
    state_dict = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    path = tmp_path / "sub" / "weights.pt"
    path.parent.mkdir()
    torch.save(state_dict, path)
    source = source_provenance(path, state_dict)
    assert source == {
        "file": "weights.pt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "tensors": 2,
        "parameters": 10,
    }


def test_compare_results_paired_counts():
    labels = torch.tensor([0, 1, 2, 3, 4])
    first = EvalResult(top1=60.0, count=5, predictions=torch.tensor([0, 1, 2, 0, 0]))
    second = EvalResult(top1=40.0, count=5, predictions=torch.tensor([0, 1, 0, 3, 1]))
    result = compare_results(first, second, labels)
    assert result["agreement"] == pytest.approx(40.0)
    assert result["delta_top1"] == pytest.approx(20.0)
    assert result["both_correct"] == 2
    assert result["only_first_correct"] == 1
    assert result["only_second_correct"] == 1
    assert result["both_wrong"] == 1
    # b = c = 1 of n = 5: variance (2 - 0) / 25, half-width 1.96 * sqrt(2) / 5 * 100 points.
    assert result["delta_top1_ci95"] == pytest.approx(1.96 * math.sqrt(2) / 5 * 100)


def test_paired_delta_interval_comes_from_the_discordant_images():
    # 95% agreement on 1,000 images, 30 vs 20 discordant: +-1.4 points, as the docstring says.
    assert paired_delta_ci95(30, 20, 1000) == pytest.approx(1.96 * math.sqrt(50 - 100 / 1000) / 1000 * 100)
    assert 1.3 < paired_delta_ci95(30, 20, 1000) < 1.45
    # Ten times the images with the same shares: the interval shrinks by sqrt(10).
    ten_times = paired_delta_ci95(300, 200, 10000)
    assert ten_times == pytest.approx(paired_delta_ci95(30, 20, 1000) / math.sqrt(10), rel=1e-3)
    assert paired_delta_ci95(0, 0, 1000) == 0.0  # identical predictions: no noise
    assert paired_delta_ci95(5, 0, 5) == 0.0  # every image discordant one way: the difference is certain
    assert paired_delta_ci95(0, 0, 0) == 0.0


def test_environment_report():
    env = environment_report()
    assert env["versions"]["torch"] == torch.__version__
    assert set(env["versions"]) >= {"python", "nerncompress", "torch", "onnxruntime", "safetensors", "typer", "rich"}
    assert env["cuda"]["available"] == torch.cuda.is_available()
    assert env["torch_threads"] >= 1
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
