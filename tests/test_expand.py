import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_fit, tiny_resnet_state_dict
from nerncompress.artifact import load_artifact, save_artifact
from nerncompress.errors import UsageError
from nerncompress.exporter import export
from nerncompress.nern import expand, expand_model, fp32_reference_bytes
from nerncompress.models import cifar_resnet


@pytest.fixture(scope="module")
def fitted():
    return tiny_fit(tiny_resnet_state_dict(), iters=10)


def test_expand_yields_every_key_in_order_with_original_shapes(fitted):
    state_dict = tiny_resnet_state_dict()
    expanded = list(expand(fitted, device="cpu"))
    assert [k for k, _ in expanded] == list(state_dict)
    for key, value in expanded:
        assert value.shape == state_dict[key].shape and value.dtype == state_dict[key].dtype
    represented = {e.name for e in fitted.layers}
    for key, value in expanded:
        if key not in represented:
            assert torch.equal(value, state_dict[key])


def test_expanded_safetensors_load_strictly_with_plain_torch(tmp_path, fitted):
    save_artifact(fitted, tmp_path / "m.nern")
    report = export(load_artifact(tmp_path / "m.nern"), tmp_path / "out.safetensors", device="cpu")
    state_dict = load_file(tmp_path / "out.safetensors")
    model = cifar_resnet.cifar_resnet(depth=8, num_classes=10)
    model.load_state_dict(state_dict, strict=True)
    assert list(state_dict) == fitted.key_order
    assert report.bytes == (tmp_path / "out.safetensors").stat().st_size
    reference = dict(expand(fitted, device="cpu"))
    assert all(torch.equal(state_dict[k], reference[k]) for k in reference)


def test_fp32_reference_is_the_size_of_a_plain_safetensors_state_dict(tmp_path, fitted):
    from safetensors.torch import save_file

    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in tiny_resnet_state_dict().items()}
    save_file(state_dict, tmp_path / "ref.safetensors")
    assert fp32_reference_bytes(fitted) == (tmp_path / "ref.safetensors").stat().st_size


def test_onnx_export_matches_pytorch(tmp_path, fitted):
    report = export(fitted, tmp_path / "m.onnx", device="cpu")
    assert report.onnx["top1_agreement"] == 100.0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = expand_model(fitted, device="cpu")(torch.from_numpy(x)).detach().numpy()
    (logits,) = session.run(None, {"input": x})
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_unknown_suffix(tmp_path, fitted):
    with pytest.raises(UsageError, match=".safetensors or .onnx"):
        export(fitted, tmp_path / "m.pt", device="cpu")


def test_large_layers_are_regenerated_in_chunks_with_the_same_values(fitted, monkeypatch):
    from nerncompress import nern as nern_module

    entry = max(fitted.layers, key=lambda e: e.num_kernels)
    with torch.no_grad():
        whole = fitted.regenerate_layer(entry)
        monkeypatch.setattr(nern_module, "PREDICT_CHUNK", 100)  # several chunks
        calls = []
        original = fitted.predictor.features_from_parts
        monkeypatch.setattr(fitted.predictor, "features_from_parts",
                            lambda *args: calls.append(len(args[2])) or original(*args))  # fmt: skip
        chunked = fitted.regenerate_layer(entry)
    assert max(calls) <= 100 and sum(calls) == entry.num_kernels
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    table = dict(expand(fitted))
    torch.testing.assert_close(table[entry.name], whole, rtol=1e-5, atol=1e-6)


def test_regeneration_without_grad_matches_the_differentiable_path(fitted):
    entry = max(fitted.layers, key=lambda e: e.num_kernels)
    with torch.enable_grad():
        differentiable = fitted.regenerate_layer(entry).detach()
    with torch.no_grad():
        separable = fitted.regenerate_layer(entry)
    torch.testing.assert_close(separable, differentiable, rtol=1e-5, atol=1e-6)


def test_shapes_of_a_torchvision_arch_are_checked_from_the_index_alone(monkeypatch):
    import dataclasses

    import torchvision

    from nerncompress import nern as nern_module
    from nerncompress.coding import code_checkpoint
    from nerncompress.errors import ArtifactError

    state_dict = torchvision.models.squeezenet1_1(num_classes=10).state_dict()
    coded, _ = code_checkpoint(state_dict, arch="torchvision:squeezenet1_1", device="cpu")
    monkeypatch.setattr(nern_module, "get_arch", lambda *a, **k: pytest.fail("built the model to check shapes"))
    nern_module.check_shapes(coded)
    monkeypatch.undo()
    key = next(iter(coded.raw))
    broken = dataclasses.replace(coded, raw={**coded.raw, key: torch.zeros(3, *coded.raw[key].shape)})
    with pytest.raises(ArtifactError, match=key):
        nern_module.check_shapes(broken)
