"""Tests of checkpoint loading, key normalisation and the finiteness check."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nerncompress.checkpoint import check_finite, load_checkpoint, normalize_state_dict
from nerncompress.errors import CheckpointError


def _state_dict() -> dict[str, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    return model.state_dict()


def _assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value)
        assert loaded[key].is_contiguous() and not loaded[key].requires_grad


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state_dict", "ema"])
@pytest.mark.parametrize("suffix", [".pt", ".th"])
def test_torch_formats(tmp_path, wrapper: str | None, suffix: str) -> None:
    sd = _state_dict()
    payload = sd if wrapper is None else {wrapper: sd, "epoch": 3, "best_prec1": 91.7}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(payload, path)
    _assert_same(load_checkpoint(path), sd)


def test_legacy_serialization_and_half_dtype_kept(tmp_path) -> None:
    sd = {k: v.half() if v.is_floating_point() else v for k, v in _state_dict().items()}
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert loaded["0.weight"].dtype == torch.float16
    _assert_same(loaded, sd)


def test_safetensors(tmp_path) -> None:
    sd = _state_dict()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    _assert_same(dict(sorted(load_checkpoint(path).items())), dict(sorted(sd.items())))
    renamed = tmp_path / "w.bin"
    renamed.write_bytes(path.read_bytes())
    assert set(load_checkpoint(renamed)) == set(sd)


def test_normalize_strips_prefixes_and_keeps_counters() -> None:
    sd = _state_dict()
    prefixed = {f"module._orig_mod.module.{k}": v for k, v in sd.items()}
    cleaned = normalize_state_dict(prefixed)
    assert list(cleaned) == list(sd)
    assert "1.num_batches_tracked" in cleaned
    with pytest.raises(CheckpointError, match="'0.weight'"):
        normalize_state_dict({"module.0.weight": torch.zeros(1), "0.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "prefix",
    ["model.", "net.", "module.model.", "model.module.", "_orig_mod.net.", "model._orig_mod.module.", "net.model."],
)
def test_normalize_strips_shared_wrapper_prefixes(prefix: str) -> None:
    sd = _state_dict()
    cleaned = normalize_state_dict({prefix + k: v for k, v in sd.items()})
    assert list(cleaned) == list(sd)
    assert all(cleaned[k] is sd[k] for k in sd)


def test_normalize_keeps_model_and_net_when_not_every_key_has_them() -> None:
    # "model." and "net." are also ordinary attribute names: a prefix only some keys share is part of the model.
    sd = {"model.weight": torch.zeros(2), "head.weight": torch.zeros(2), "net.bias": torch.zeros(2)}
    assert list(normalize_state_dict(sd)) == list(sd)
    assert list(normalize_state_dict({f"module.{k}": v for k, v in sd.items()})) == list(sd)
    nested = {"model.net.a": torch.zeros(1), "model.net.b": torch.zeros(1), "model.head.c": torch.zeros(1)}
    assert list(normalize_state_dict(nested)) == ["net.a", "net.b", "head.c"]


def test_missing_and_directory(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.pt", b"", "empty"),
        ("random.pt", os.urandom(2048), "corrupt"),
        ("random.safetensors", os.urandom(2048), "corrupt"),
        ("text.pth", b"hello world\n" * 10, "corrupt"),
    ],
)
def test_bad_bytes(tmp_path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated(tmp_path, legacy: bool) -> None:
    path = tmp_path / "full.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    sf = tmp_path / "cut.safetensors"
    save_file(_state_dict(), str(sf))
    sf.write_bytes(sf.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(sf)


def test_no_tensors_and_non_tensor_values(tmp_path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="no tensors.*'epoch'"):
        load_checkpoint(path)
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_checkpoint(path)
    torch.save({"w": torch.zeros(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="'note' holds a str"):
        load_checkpoint(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)


def test_pickled_module_needs_trust(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / "module.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="--trust-pickle") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "module.pt" in str(info.value)
    _assert_same(load_checkpoint(path, trust_pickle=True), model.state_dict())
    torch.save({"model": model, "epoch": 1}, path)
    _assert_same(load_checkpoint(path, trust_pickle=True), model.state_dict())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_needs_trust(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(CheckpointError, match="TorchScript.*--trust-pickle"):
        load_checkpoint(path)
    _assert_same(load_checkpoint(path, trust_pickle=True), model.state_dict())


def test_check_finite_names_first_bad_key() -> None:
    sd = _state_dict()
    check_finite(sd)
    sd["1.running_var"] = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    sd["0.weight"] = sd["0.weight"].clone()
    sd["0.weight"][0, 0, 0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="'0.weight' has 0 NaN and 1 Inf"):
        check_finite(sd)
