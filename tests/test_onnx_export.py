"""Tests for nerncompress.onnx_export: single-file export, dynamic batch axis, parity check, atomic write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nerncompress import onnx_export
from nerncompress.errors import ExportCheckError, UsageError
from nerncompress.onnx_export import ExportReport, export_onnx, onnx_providers

SHAPE = (3, 8, 8)


class TinyNet(nn.Module):
    """Conv-BN stem, a strided block with an option-A pad shortcut, global pooling and a Linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():  # non-trivial BN statistics so that eval-mode BN matters
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        x = F.relu(self.bn2(self.conv2(x)) + shortcut)
        return self.fc(torch.flatten(self.pool(x), 1))


class DataDependent(nn.Module):
    """Python control flow on tensor values: neither exporter can capture it faithfully."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x.flatten(1)[:, :3]
        return -x.flatten(1)[:, :3]


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def test_export_checks_verifies_and_is_self_contained(tiny: TinyNet, tmp_path: Path, capfd) -> None:
    tiny.train()  # the export must use eval mode on a copy and leave the caller's model as it was
    out = tmp_path / "tiny.onnx"
    report = export_onnx(tiny, out, input_shape=SHAPE, verify_inputs=16)

    assert tiny.training
    assert capfd.readouterr() == ("", "")  # no exporter chatter on stdout or stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no external data, no temp file
    assert isinstance(report, ExportReport)
    assert report.path == str(out)
    assert report.opset == 18
    assert report.bytes == out.stat().st_size > 0
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.top1_agreement == 100.0
    assert report.inputs == 16
    assert report.provider == "CPUExecutionProvider"
    assert report.exporter == "dynamo"
    assert report.seconds > 0
    assert json.loads(json.dumps(report.to_dict()))["opset"] == 18

    onnx.checker.check_model(str(out))
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    tiny.eval()
    for batch in (1, 7):
        x = torch.randn(batch, *SHAPE)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            want = tiny(x).numpy()
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_impossible_tolerance_raises_and_leaves_no_file(tiny: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    with pytest.raises(ExportCheckError) as info:
        export_onnx(tiny, out, input_shape=SHAPE, verify_inputs=8, tolerance=-1.0)
    message = str(info.value)
    assert "\n" not in message and "max |delta|" in message and "tolerance -1" in message
    assert list(tmp_path.iterdir()) == []


def test_file_that_differs_from_model_raises_and_leaves_no_file(
    tiny: TinyNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = onnx_export._export_dynamo

    def export_other_model(module, example, tmp, *, opset):  # the file gets different weights
        other = TinyNet().eval()
        real_export(other, example, tmp, opset=opset)

    monkeypatch.setattr(onnx_export, "_export_dynamo", export_other_model)
    with pytest.raises(ExportCheckError, match="does not match PyTorch"):
        export_onnx(tiny, tmp_path / "tiny.onnx", input_shape=SHAPE, verify_inputs=8)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_a_usage_error(tiny: TinyNet, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match="does not exist"):
        export_onnx(tiny, missing / "tiny.onnx", input_shape=SHAPE)
    assert not missing.exists()


def test_bad_arguments_are_usage_errors(tiny: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    with pytest.raises(UsageError, match="input_shape"):
        export_onnx(tiny, out, input_shape=(3, 8))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="provider"):
        export_onnx(tiny, out, input_shape=SHAPE, provider="tpu")
    with pytest.raises(UsageError, match="opset"):
        export_onnx(tiny, out, input_shape=SHAPE, opset=17, exporter="dynamo")
    with pytest.raises(UsageError, match="verify_inputs"):
        export_onnx(tiny, out, input_shape=SHAPE, verify_inputs=0)
    with pytest.raises(UsageError, match="is a folder"):
        export_onnx(tiny, tmp_path, input_shape=SHAPE)
    if "CUDAExecutionProvider" not in onnx_providers():
        with pytest.raises(UsageError, match="CUDAExecutionProvider"):
            export_onnx(tiny, out, input_shape=SHAPE, provider="cuda")
    assert list(tmp_path.iterdir()) == []


def test_providers_and_auto_choice() -> None:
    available = onnx_providers()
    assert "CPUExecutionProvider" in available
    chosen = onnx_export._resolve_providers("auto")
    if "CUDAExecutionProvider" in available:
        assert chosen[0][0] == "CUDAExecutionProvider"
    else:
        assert chosen == ["CPUExecutionProvider"]
    assert onnx_export._resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_old_opset_uses_torchscript_exporter_without_verification(tiny: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "tiny17.onnx"
    report = export_onnx(tiny, out, input_shape=SHAPE, opset=17, verify=False)
    assert (report.opset, report.exporter) == (17, "torchscript")
    assert (report.max_abs_diff, report.top1_agreement, report.inputs, report.provider) == (None, None, 0, "")
    assert onnx.load(str(out)).opset_import[0].version == 17
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        assert session.run(None, {"input": np.zeros((batch, *SHAPE), np.float32)})[0].shape == (batch, 5)


def test_data_dependent_control_flow_is_refused(tmp_path: Path, capfd) -> None:
    with pytest.raises(ExportCheckError) as info:
        export_onnx(DataDependent(), tmp_path / "dd.onnx", input_shape=SHAPE, verify_inputs=4)
    assert "\n" not in str(info.value) and "TorchScript fallback" in str(info.value)
    assert capfd.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_batch_sizes_differ() -> None:
    assert onnx_export._batch_sizes(1) == [1]
    assert onnx_export._batch_sizes(64) == [33, 31]
    assert onnx_export._batch_sizes(3) == [2, 1]
    assert all(sum(onnx_export._batch_sizes(n)) == n for n in range(1, 20))
