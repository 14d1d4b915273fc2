import torch
from torch import nn

from nerncompress.layers import find_convs, following_batchnorms, plan_layers
from nerncompress.models import get_arch


def test_every_conv_of_a_cifar_resnet_is_represented():
    model = get_arch("cifar_resnet", depth=8, num_classes=10)
    plan = plan_layers(model, hidden=16)
    assert [e.name for e in plan.layers] == [k for k, _ in find_convs(model)]
    assert plan.kernel_sizes == (3,)
    assert [e.layer_index for e in plan.layers] == list(range(len(plan.layers)))
    assert plan.raw_convs == {}


def test_kernel_sizes_get_heads_only_when_they_pay():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 7), nn.BatchNorm2d(8), nn.Conv2d(8, 64, 3), nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, (1, 3))
    )
    plan = plan_layers(model, hidden=32)
    names = {e.name: e.kernel_size for e in plan.layers}
    assert names == {"2.weight": 3, "3.weight": 1}
    assert "no head for 7x7" in plan.raw_convs["0.weight"]
    assert "non-square" in plan.raw_convs["4.weight"]


def test_forced_raw_layers_and_min_kernels():
    model = get_arch("cifar_resnet", depth=8, num_classes=10)
    plan = plan_layers(model, hidden=16, raw_layers=("layer1.0.conv1.weight",), min_kernels=100)
    assert plan.raw_convs["layer1.0.conv1.weight"] == "kept raw on request"
    assert plan.raw_convs["conv1.weight"].startswith("fewer than 100")


def test_following_batchnorms():
    model = get_arch("cifar_resnet", depth=8, num_classes=10)
    pairs = following_batchnorms(model)
    assert pairs["conv1.weight"] == "bn1"
    assert pairs["layer2.0.conv2.weight"] == "layer2.0.bn2"
    tv = get_arch("torchvision:resnet18", num_classes=10)
    assert following_batchnorms(tv)["layer2.0.downsample.0.weight"] == "layer2.0.downsample.1"
    assert torch.is_tensor(tv.conv1.weight)
