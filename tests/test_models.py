"""Tests of the architecture registry, the CIFAR ResNet, the digits CNN, torchvision detection and round trips."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, requires_shared_data
from helpers import invoke

from nerncompress.artifact import load_artifact, save_artifact
from nerncompress.checkpoint import load_checkpoint, normalize_state_dict
from nerncompress.errors import ArchDetectionError, UsageError
from nerncompress.models import torchvision_index
from nerncompress.models import torchvision_models as tv_models
from nerncompress.models import (
    ArchSpec,
    build_model,
    build_on_meta,
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
    spec = resolve_arch("torchvision:shufflenet_v2_x0_5", {"fc.weight": torch.zeros(5, 1024)})
    assert spec.kwargs == {"num_classes": 5}  # does not fit exactly: num_classes from the classifier's rows
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


# --------------------------------------------------------------------------- torchvision: detection on the meta device
def _torchvision_cases() -> list:
    """Every torchvision classification model (and the aux_logits=False variants), a few with other class counts."""
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    configs = [(name, kwargs) for name in names for kwargs in ({}, *tv_models._VARIANTS.get(name, ()))]
    return [
        pytest.param(name, kwargs, (1000, 10, 37, 1)[i % 4], id=name + "".join(f"-{k}={v}" for k, v in kwargs.items()))
        for i, (name, kwargs) in enumerate(configs)
    ]


def _meta_state_dict(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """Keys and shapes of a torchvision model, no memory: tensors on the meta device (no weights anywhere)."""
    return build_on_meta(lambda: tv_models._build(name, **kwargs)).state_dict()


@pytest.mark.parametrize(("name", "kwargs", "num_classes"), _torchvision_cases())
def test_every_torchvision_model_is_detected(name: str, kwargs: dict, num_classes: int) -> None:
    state_dict = _meta_state_dict(name, num_classes=num_classes, **kwargs)
    spec = detect_arch(state_dict)
    assert spec.name == f"torchvision:{name}"
    assert spec.kwargs == {"num_classes": num_classes, **kwargs}
    assert spec.preset == "imagenet" and spec.input_shape[0] == 3
    assert resolve_arch(f"torchvision:{name}", state_dict) == spec
    if tv_models._torchvision_version() == torchvision_index.TORCHVISION_VERSION:
        assert tv_models._make_config(name, kwargs) in tv_models._index(), (
            "the stored index is out of date: run nerncompress.models.torchvision_models.write_index()"
        )


def test_torchvision_index_has_no_look_alikes() -> None:
    import torchvision

    alike = Counter((config.keys, config.shapes) for config in tv_models._index())
    assert max(alike.values()) == 1
    assert tv_models.detectable_models() == sorted(torchvision.models.list_models(module=torchvision.models))


def test_torchvision_native_input_sizes() -> None:
    sizes = {name: detect_arch(_meta_state_dict(name)).input_shape for name in ("inception_v3", "efficientnet_b3")}
    assert sizes == {"inception_v3": (3, 299, 299), "efficientnet_b3": (3, 300, 300)}


def test_vit_image_size_is_read_from_the_position_embedding() -> None:
    state_dict = _meta_state_dict("vit_b_16", num_classes=7, image_size=384)
    spec = detect_arch(state_dict)
    assert spec == ArchSpec("torchvision:vit_b_16", {"num_classes": 7, "image_size": 384}, "imagenet", (3, 384, 384))
    assert get_arch(spec).image_size == 384
    odd = dict(state_dict, **{"encoder.pos_embedding": torch.empty(1, 150, 768, device="meta")})  # 149: no square
    with pytest.raises(ArchDetectionError, match="no registered architecture"):
        detect_arch(odd)


def test_torchvision_look_alikes_are_told_apart_by_shapes() -> None:
    for name in ("resnet50", "resnext50_32x4d", "wide_resnet50_2"):
        assert detect_arch(_meta_state_dict(name, num_classes=3)).name == f"torchvision:{name}"


def test_torchvision_non_default_kwargs_are_not_detected() -> None:
    state_dict = _meta_state_dict("mobilenet_v2", width_mult=0.5)
    with pytest.raises(ArchDetectionError, match="torchvision:<every classification model>") as info:
        detect_arch(state_dict)
    assert "\n" not in str(info.value)


def test_ambiguous_checkpoint_names_both_and_asks_for_arch(monkeypatch) -> None:
    by_keys = dict(tv_models._by_keys())
    original = next(config for config in tv_models._index() if config.name == "resnet18")
    twin = dataclasses.replace(original, name="resnet18_twin")
    by_keys[original.keys] = (*by_keys[original.keys], twin)
    monkeypatch.setattr(tv_models, "_by_keys", lambda: by_keys)
    with pytest.raises(ArchDetectionError) as info:
        detect_arch(_meta_state_dict("resnet18", num_classes=4))
    message = str(info.value)
    assert "\n" not in message
    assert "torchvision:resnet18, torchvision:resnet18_twin" in message
    assert "--arch torchvision:resnet18" in message


def test_explicit_torchvision_arch_that_does_not_fit_names_the_key() -> None:
    state_dict = _meta_state_dict("resnet18", num_classes=10)
    spec = resolve_arch("torchvision:resnet34", state_dict)
    assert spec.kwargs == {"num_classes": 10}
    with pytest.raises(ArchDetectionError, match="lacks key 'layer1.2.conv1.weight'"):
        build_model(spec, state_dict)


def test_regnet_builds_on_meta_although_it_computes_widths_with_torch() -> None:
    state_dict = _meta_state_dict("regnet_y_400mf", num_classes=10)
    assert all(value.is_meta for key, value in state_dict.items() if not key.endswith("num_batches_tracked"))


# --------------------------------------------------------------------------------------------------- wrapper prefixes
@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod.", "net.", "module._orig_mod.model.", "model.net."])
def test_wrapped_torchvision_checkpoint_is_detected_after_normalisation(prefix: str) -> None:
    state_dict = _meta_state_dict("mobilenet_v3_small", num_classes=5)
    state_dict = {prefix + k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    first = prefix.partition(".")[0]
    with pytest.raises(ArchDetectionError, match=f"keys start with '{first}.'.*normalize_state_dict"):
        detect_arch(state_dict)
    spec = detect_arch(normalize_state_dict(state_dict))
    assert spec == ArchSpec("torchvision:mobilenet_v3_small", {"num_classes": 5}, "imagenet", (3, 224, 224))


def test_unknown_shared_prefix_is_named_in_the_error() -> None:
    state_dict = {f"backbone.body.{k}": v for k, v in _meta_state_dict("resnet18").items()}
    with pytest.raises(ArchDetectionError, match="every key starts with 'backbone.body.'.*not stripped") as info:
        detect_arch(normalize_state_dict(state_dict))
    assert "\n" not in str(info.value)


def test_user_builder_that_returns_the_wrapper_gets_its_prefix_back(tmp_path, monkeypatch) -> None:
    (tmp_path / "wrapped_nern.py").write_text(
        "import torch.nn as nn\n\n"
        "class Lit(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))\n\n"
        "def build():\n"
        "    return Lit()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {"model.1.weight": torch.ones(3, 12), "model.1.bias": torch.zeros(3)}  # a Lightning-style checkpoint
    state_dict = normalize_state_dict(saved)
    assert list(state_dict) == ["1.weight", "1.bias"]
    model = build_model(resolve_arch("wrapped_nern:build", state_dict), state_dict)
    assert torch.equal(model.model[1].weight, torch.ones(3, 12))
    sys.modules.pop("wrapped_nern", None)


# --------------------------------------------------------------------------------------- a user builder in the folder
LOCAL_BUILDER = "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))\n"


@pytest.fixture
def bare_sys_path(tmp_path, monkeypatch):
    """The current folder is ``tmp_path`` and is not on sys.path, as for the installed console script."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield tmp_path
    for name in ("localbuild_nern", "localpkg_nern", "localpkg_nern.nets"):
        sys.modules.pop(name, None)


def test_local_user_builder_imports_from_the_current_folder(bare_sys_path) -> None:
    (bare_sys_path / "localbuild_nern.py").write_text(LOCAL_BUILDER)
    (bare_sys_path / "localpkg_nern").mkdir()
    (bare_sys_path / "localpkg_nern" / "__init__.py").write_text("")
    (bare_sys_path / "localpkg_nern" / "nets.py").write_text(LOCAL_BUILDER)
    state_dict = {"1.weight": torch.ones(3, 12), "1.bias": torch.zeros(3)}
    for arch in ("localbuild_nern:build", "localpkg_nern.nets:build"):
        model = build_model(resolve_arch(arch, state_dict), state_dict)
        assert torch.equal(model[1].weight, torch.ones(3, 12))
    assert sys.path[-1] == str(bare_sys_path)  # appended: it never shadows an installed module


def test_missing_local_user_builder_says_where_to_put_it(bare_sys_path) -> None:
    with pytest.raises(ArchDetectionError, match="put absent_nern.py .* in the current folder.*PYTHONPATH") as info:
        resolve_arch("absent_nern:build", {})
    assert "\n" not in str(info.value)


def test_local_user_builder_named_by_a_file_still_needs_trust(bare_sys_path) -> None:
    (bare_sys_path / "localbuild_nern.py").write_text("raise SystemExit('imported')\n" + LOCAL_BUILDER)
    read = ArchSpec.from_dict({"name": "localbuild_nern:build"})
    with pytest.raises(UsageError, match="--trust-code"):
        get_arch(read)
    assert "localbuild_nern" not in sys.modules


def test_local_user_builder_through_the_cli(bare_sys_path) -> None:
    (bare_sys_path / "localbuild_nern.py").write_text(
        "import torch.nn as nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"
        "build.input_shape = (3, 16, 16)\n"
    )
    sys.path.append(str(bare_sys_path))  # build the checkpoint with the same module
    import localbuild_nern

    sys.path.remove(str(bare_sys_path))
    sys.modules.pop("localbuild_nern")
    torch.save(localbuild_nern.build().state_dict(), bare_sys_path / "local.pt")
    result = invoke("fit", "local.pt", "--arch", "localbuild_nern:build", *TINY_FIT, "-o", "local.nern", "--json")
    assert result.exit_code == 0, result.stderr
    assert load_artifact(bare_sys_path / "local.nern").arch.name == "localbuild_nern:build"


# ------------------------------------------------------------------------ torchvision: round trips through the CLI
TINY_FIT = ["--hidden", "8", "--iters", "2", "--levels", "2", "--permute", "none", "--device", "cpu"]
ROUND_TRIP_SIZE = 64  # the ONNX check's input height and width: every model here takes it
SLOW = pytest.mark.slow
# Fit (architecture detected) and expand to safetensors: a representative dozen.
ROUND_TRIPS = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "densenet121",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
    "mnasnet0_5",
    "googlenet",
    "swin_t",
    pytest.param("vgg11", marks=SLOW),  # 0.5 GB of fully connected weights, stored raw
]
# Expand to ONNX, checked against PyTorch: torch.export takes seconds per hundred ops, so the larger graphs are slow.
ONNX_ROUND_TRIPS = [
    "resnet18",
    "convnext_tiny",
    "squeezenet1_0",
    *(pytest.param(name, marks=SLOW) for name in ("mobilenet_v3_small", "efficientnet_b0", "densenet121")),
    *(pytest.param(name, marks=SLOW) for name in ("regnet_y_400mf", "shufflenet_v2_x0_5", "mnasnet0_5")),
    *(pytest.param(name, marks=SLOW) for name in ("googlenet", "swin_t", "vgg11")),
]


def _tame(model: torch.nn.Module) -> torch.nn.Module:
    """Keep the logits of the regenerated model finite and well conditioned.

    Two steps of a width-8 predictor regenerate near-identical kernels, whose sums grow layer after layer until the
    logits overflow; large BatchNorm variances keep every layer's output moderate, and varied conv biases keep the
    channels apart for the LayerNorms that follow them (ConvNeXt).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(1e4)
                module.bias.uniform_(0.0, 0.5)
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.uniform_(-1.0, 1.0)
    return model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``name -> (folder, .nern path)``: a randomly initialised torchvision model with 10 classes, saved as a
    DataParallel checkpoint and fitted through the CLI without --arch; each name is fitted once per module."""
    done: dict[str, tuple] = {}

    def fit_once(name: str):
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            torch.manual_seed(0)
            original = _tame(get_arch(f"torchvision:{name}", num_classes=10))
            checkpoint = folder / f"{name}.pt"
            torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, checkpoint)
            del original
            nern = folder / f"{name}.nern"
            result = invoke("fit", checkpoint, *TINY_FIT, "-o", nern, "--json")
            assert result.exit_code == 0, result.stderr
            checkpoint.unlink()
            done[name] = (folder, nern)
        return done[name]

    return fit_once


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")  # googlenet, plain torchvision
@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_torchvision_fit_and_expand_to_safetensors(name: str, fitted) -> None:
    import torchvision
    from safetensors.torch import load_file

    folder, nern = fitted(name)
    artifact = load_artifact(nern)
    assert (artifact.arch.name, artifact.arch.kwargs) == (f"torchvision:{name}", {"num_classes": 10})
    weights = folder / f"{name}.safetensors"
    result = invoke("expand", nern, "-o", weights, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    fresh = torchvision.models.get_model(name, weights=None, num_classes=10)
    state = OrderedDict(load_file(str(weights)))
    state._metadata = fresh.state_dict()._metadata  # MNASNet's loader needs the version no safetensors file holds
    fresh.load_state_dict(state, strict=True)
    weights.unlink()


@pytest.mark.parametrize("name", ONNX_ROUND_TRIPS)
def test_torchvision_expand_to_onnx_matches_pytorch(name: str, fitted) -> None:
    import onnxruntime

    folder, nern = fitted(name)
    artifact = load_artifact(nern)
    small = folder / f"{name}-small.nern"  # a small input keeps the check quick; every model here takes it
    shape = (3, ROUND_TRIP_SIZE, ROUND_TRIP_SIZE)
    save_artifact(dataclasses.replace(artifact, arch=dataclasses.replace(artifact.arch, input_shape=shape)), small)
    onnx_file = folder / f"{name}.onnx"
    result = invoke("expand", small, "-o", onnx_file, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr  # the CLI compares onnxruntime with PyTorch on 64 inputs
    assert json.loads(result.stdout)["onnx"]["top1_agreement"] == 100.0
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((3, *shape), dtype=np.float32)})[0]
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    onnx_file.unlink()


def test_torchvision_spec_of_shapes_reads_the_index_alone() -> None:
    shapes = {key: tuple(value.shape) for key, value in _meta_state_dict("resnet18", num_classes=10).items()}
    spec = tv_models.torchvision_spec_of_shapes("resnet18", shapes)
    assert spec == ArchSpec("torchvision:resnet18", {"num_classes": 10}, "imagenet", (3, 224, 224))
    assert tv_models.torchvision_spec_of_shapes("resnet34", shapes) is None
    wrong = {**shapes, "layer1.0.conv1.weight": (64, 64, 3, 2)}
    assert tv_models.torchvision_spec_of_shapes("resnet18", wrong) is None
    missing = {key: shape for key, shape in shapes.items() if key != "layer1.0.bn1.bias"}
    assert tv_models.torchvision_spec_of_shapes("resnet18", missing) is None
