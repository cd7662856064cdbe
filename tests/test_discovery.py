from __future__ import annotations

import torch
from torch import nn

from methods.discovery import discover_layers, total_macs


class CaffeLeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_lenet5_layers_shapes_params_and_macs() -> None:
    specs = discover_layers(CaffeLeNet5(), (1, 28, 28))
    assert [s.name for s in specs] == ["conv1", "conv2", "fc1", "fc2"]
    conv1, conv2, fc1, fc2 = specs
    assert (conv1.kind, conv1.in_channels, conv1.out_channels, conv1.kernel, conv1.input_hw, conv1.output_hw) == (
        "conv", 1, 20, 5, 28, 24)
    assert conv1.params == 500 and conv1.macs == 500 * 24 * 24
    assert conv2.params == 25_000 and conv2.macs == 25_000 * 8 * 8 and conv2.input_hw == 12
    assert (fc1.kind, fc1.params, fc1.macs) == ("linear", 400_000, 400_000)
    assert fc2.macs == 5_000
    assert total_macs(specs) == 288_000 + 1_600_000 + 400_000 + 5_000


def test_depthwise_and_strided_layers_and_other_input_channels() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    first, depthwise = discover_layers(model, (3, 32, 32))
    assert (first.stride, first.output_hw, first.macs) == (2, 16, 3 * 8 * 9 * 16 * 16)
    assert depthwise.kind == "depthwise" and depthwise.groups == 8 and depthwise.macs == 8 * 9 * 16 * 16


def test_discovery_leaves_the_model_untouched() -> None:
    model = CaffeLeNet5().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover_layers(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
