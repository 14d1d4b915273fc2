"""Tests of the architecture registry, the CIFAR ResNet, the digits CNN and torchvision detection."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from conftest import SHARED_DATA, requires_shared_data

from nerncompress.checkpoint import load_checkpoint, normalize_state_dict
from nerncompress.errors import ArchDetectionError, UsageError
from nerncompress.models import (
    ArchSpec,
    build_model,
    check_arch,
    detect_arch,
    get_arch,
    list_archs,
    register_arch,
    resolve_arch,
)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_detection(depth: int, num_classes: int) -> None:
    state_dict = get_arch("cifar_resnet", depth=depth, num_classes=num_classes).state_dict()
    spec = detect_arch(state_dict)
    assert spec == ArchSpec("cifar_resnet", {"depth": depth, "num_classes": num_classes}, "imagenet", (3, 32, 32))


def test_cifar_resnet_width_multiplier_and_missing_bn_counters() -> None:
    state_dict = get_arch("cifar_resnet", depth=20, width=32).state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    spec = detect_arch(state_dict)
    assert spec.kwargs == {"depth": 20, "num_classes": 10, "width": 32}
    model = build_model(spec, state_dict)
    assert not model.training
    assert torch.equal(model.conv1.weight, state_dict["conv1.weight"])


def test_cifar_resnet_forward_dynamic_batch() -> None:
    model = get_arch("cifar_resnet", depth=20, num_classes=7).eval()
    with torch.no_grad():
        for batch in (1, 3):
            assert model(torch.randn(batch, 3, 32, 32)).shape == (batch, 7)


def test_cifar_resnet_bad_depth() -> None:
    with pytest.raises(ArchDetectionError, match="6n\\+2"):
        get_arch("cifar_resnet", depth=21)


def test_digits_cnn_forward_and_detection() -> None:
    model = get_arch("digits_cnn", width=8, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    spec = detect_arch(model.state_dict())
    assert spec == ArchSpec("digits_cnn", {"width": 8, "num_classes": 10}, "digits", (1, 8, 8))
    assert get_arch("digits_cnn").classifier.in_features == 64  # default width 32


def test_arch_spec_round_trip_and_hash() -> None:
    spec = ArchSpec("cifar_resnet", {"depth": 56, "num_classes": 10}, "imagenet", (3, 32, 32))
    data = json.loads(json.dumps(spec.to_dict()))
    assert ArchSpec.from_dict(data) == spec
    assert hash(ArchSpec.from_dict(data)) == hash(spec)
    with pytest.raises(ArchDetectionError):
        ArchSpec.from_dict({"kwargs": {}})


def test_wrong_shape_strict_load_names_key() -> None:
    state_dict = get_arch("cifar_resnet", depth=20, num_classes=10).state_dict()
    spec = ArchSpec("cifar_resnet", {"depth": 20, "num_classes": 100}, "imagenet", (3, 32, 32))
    with pytest.raises(ArchDetectionError, match="'linear.weight' has shape \\(10, 64\\)") as info:
        build_model(spec, state_dict)
    assert "\n" not in str(info.value)


def test_missing_and_unexpected_keys_named() -> None:
    state_dict = get_arch("cifar_resnet", depth=20).state_dict()
    spec = detect_arch(state_dict)
    missing = {k: v for k, v in state_dict.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(ArchDetectionError, match="lacks key 'layer2.1.conv2.weight'"):
        build_model(spec, missing)
    extra = {**state_dict, "extra.weight": torch.zeros(1)}
    with pytest.raises(ArchDetectionError, match="'extra.weight' is not part of"):
        build_model(spec, extra)


def test_unknown_arch_lists_available() -> None:
    with pytest.raises(ArchDetectionError, match="cifar_resnet") as info:
        get_arch("no_such_net")
    assert "digits_cnn" in str(info.value)
    with pytest.raises(ArchDetectionError, match="no_such_net"):
        resolve_arch("no_such_net", {})
    with pytest.raises(ArchDetectionError, match="torchvision"):
        resolve_arch("torchvision:no_such_net", {})


def test_undetectable_checkpoint_is_one_line_naming_detectors() -> None:
    state_dict = {"encoder.weight": torch.zeros(4, 4), "decoder.weight": torch.zeros(4, 4)}
    with pytest.raises(ArchDetectionError) as info:
        detect_arch(state_dict)
    message = str(info.value)
    assert "\n" not in message
    for name in list_archs():
        assert name in message
    assert "--arch" in message


def test_prefixed_keys_get_a_hint() -> None:
    state_dict = {f"module.{k}": v for k, v in get_arch("digits_cnn", width=4).state_dict().items()}
    with pytest.raises(ArchDetectionError, match="normalize_state_dict"):
        detect_arch(state_dict)


def test_resolve_registered_name() -> None:
    state_dict = get_arch("cifar_resnet", depth=32, num_classes=100).state_dict()
    assert resolve_arch(None, state_dict).kwargs == {"depth": 32, "num_classes": 100}
    assert resolve_arch("cifar_resnet", state_dict).kwargs == {"depth": 32, "num_classes": 100}
    with pytest.raises(ArchDetectionError, match="does not fit --arch digits_cnn.*cifar_resnet"):
        resolve_arch("digits_cnn", state_dict)


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_arch("cifar_resnet")(lambda: torch.nn.Identity())


def test_torchvision_resnet18_detection_and_build() -> None:
    import torchvision

    state_dict = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    spec = detect_arch(state_dict)
    assert spec == ArchSpec("torchvision:resnet18", {"num_classes": 10}, "imagenet", (3, 224, 224))
    model = build_model(spec, state_dict)
    assert torch.equal(model.fc.weight, state_dict["fc.weight"])
    assert resolve_arch("torchvision:resnet18", state_dict) == spec


def test_torchvision_generic_name() -> None:
    import torchvision

    state_dict = torchvision.models.squeezenet1_1(weights=None).state_dict()
    with pytest.raises(ArchDetectionError):
        detect_arch(state_dict)
    spec = resolve_arch("torchvision:shufflenet_v2_x0_5", {"fc.weight": torch.zeros(5, 1024)})
    assert spec.kwargs == {"num_classes": 5}
    assert get_arch(spec).fc.out_features == 5


def test_user_builder(tmp_path, monkeypatch) -> None:
    package = tmp_path / "userpkg_nern"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def tiny():
                return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

            tiny.preset = "none"
            tiny.input_shape = (3, 2, 2)

            def plain():
                return nn.Linear(4, 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    state_dict = {"1.weight": torch.ones(3, 12), "1.bias": torch.zeros(3)}
    spec = resolve_arch("userpkg_nern.nets:tiny", state_dict)
    assert spec == ArchSpec("userpkg_nern.nets:tiny", {}, "none", (3, 2, 2))
    model = build_model(spec, state_dict)
    assert torch.equal(model[1].weight, torch.ones(3, 12))
    plain = resolve_arch("userpkg_nern.nets:plain", {})
    assert (plain.preset, plain.input_shape) == ("imagenet", (3, 224, 224))
    with pytest.raises(ArchDetectionError, match="no callable 'missing'"):
        resolve_arch("userpkg_nern.nets:missing", {})
    with pytest.raises(ArchDetectionError, match="cannot import"):
        resolve_arch("userpkg_nern_absent.nets:tiny", {})
    sys.modules.pop("userpkg_nern.nets", None)
    sys.modules.pop("userpkg_nern", None)


@pytest.mark.integration
@requires_shared_data
@pytest.mark.parametrize(("filename", "depth"), [("resnet20-12fca82f.th", 20), ("resnet56-4bfd9763.th", 56)])
def test_real_akamaster_checkpoints(filename: str, depth: int) -> None:
    state_dict = normalize_state_dict(load_checkpoint(SHARED_DATA / "models" / filename))
    spec = detect_arch(state_dict)
    assert spec == ArchSpec("cifar_resnet", {"depth": depth, "num_classes": 10}, "imagenet", (3, 32, 32))
    model = build_model(spec, state_dict)
    assert not model.training
    assert torch.equal(model.linear.weight, state_dict["linear.weight"])
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------------------ specs read from files: trust, bounds
def test_spec_from_a_file_is_untrusted_but_equal() -> None:
    spec = ArchSpec("cifar_resnet", {"depth": 8, "num_classes": 10}, "imagenet", (3, 32, 32))
    read = ArchSpec.from_dict(spec.to_dict())
    assert read.untrusted and not spec.untrusted
    assert read == spec and hash(read) == hash(spec) and read.to_dict() == spec.to_dict()
    assert not read.trusted().untrusted and not ArchSpec.from_dict(spec.to_dict(), trusted=True).untrusted
    assert isinstance(build_model(read), torch.nn.Module)  # within bounds: builds without trust


def test_user_builder_from_a_file_is_not_imported_without_trust() -> None:
    read = ArchSpec.from_dict({"name": "nern_absent_evil_module:build", "kwargs": {}})
    with pytest.raises(UsageError, match="nern_absent_evil_module:build.*trust_code=True"):
        get_arch(read)  # refused before any import: the module does not even exist
    trusted = ArchSpec.from_dict({"name": "nern_absent_evil_module:build", "kwargs": {}}, trusted=True)
    with pytest.raises(ArchDetectionError, match="cannot import"):
        get_arch(trusted)  # trusted when read: imported (and missing)
    with pytest.raises(ArchDetectionError, match="cannot import"):
        get_arch(read.trusted())


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cifar_resnet", {"depth": 6 * 10**6 + 2}, "depth=6000002 .* out of bounds"),
        ("cifar_resnet", {"depth": 20, "width": 4096}, "width=4096"),
        ("cifar_resnet", {"depth": "20"}, "out of bounds"),
        ("cifar_resnet", {"depth": 20, "blocks": 3}, "not allowed"),
        ("digits_cnn", {"num_classes": 10**6}, "num_classes"),
        ("torchvision:resnet18", {"num_classes": 10**6}, "num_classes"),
        ("torchvision:alexnet", {"num_classes": 10, "dropout": 0.5}, "dropout"),
    ],
)
def test_outsized_kwargs_from_a_file_are_refused(name: str, kwargs: dict, message: str) -> None:
    read = ArchSpec.from_dict({"name": name, "kwargs": kwargs})
    with pytest.raises(ArchDetectionError, match=message):
        get_arch(read)
    check_arch(read.trusted())  # the user vouches for the file: nothing checked (and nothing built here)
    check_arch(ArchSpec(name, kwargs))  # made in code: the caller's own choice


def test_outsized_input_shape_and_bool_kwargs_from_a_file() -> None:
    with pytest.raises(ArchDetectionError, match="input shape"):
        check_arch(ArchSpec.from_dict({"name": "cifar_resnet", "input_shape": [3, 10**5, 10**5]}))
    with pytest.raises(ArchDetectionError, match="input shape"):
        check_arch(ArchSpec.from_dict({"name": "cifar_resnet", "input_shape": [1000, 8, 8]}))
    check_arch(ArchSpec.from_dict({"name": "torchvision:resnet18", "kwargs": {"zero_init_residual": True}}))
