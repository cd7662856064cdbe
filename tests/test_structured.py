"""Structured pruning across residual, depthwise, concat and flatten patterns."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from envs.tasks.mobilenet import InvertedResidual, conv_bn
from methods.discovery import discover_layers
from methods.structured import channel_groups, kept_channels, prune_channels, replay_pruning


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = nn.functional.adaptive_avg_pool2d(x, 7).flatten(1)
        return self.fc(torch.relu(self.fc1(x)))


class DepthwiseConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatConv(nn.Module):
    """Two conv-BN branches concatenated and fed to a regular 3x3 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(*conv_bn(1, 6, 3), nn.ReLU())
        self.b = nn.Sequential(*conv_bn(1, 10, 3), nn.ReLU())
        self.mix = nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mix(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(x.mean(dim=(2, 3)))


class Inverted(nn.Module):
    """MobileNetV2 blocks: a strided expand-depthwise-project block, then one with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8, 3), nn.ReLU6())
        self.down = InvertedResidual(8, 12, stride=2, expansion=4)
        self.same = InvertedResidual(12, 12, stride=1, expansion=4)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.same(self.down(self.stem(x))).mean(dim=(2, 3)))


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a mis-pruned BN shows in the output."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return model


@pytest.mark.parametrize("net", [Residual, DepthwiseConcat, ConcatConv, Inverted])
def test_pruned_models_run_and_replay_exactly(net: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorm(net()).eval()
    groups = channel_groups(model, (1, 28, 28))
    assert groups, "no prunable group found"
    assert all(group.leader != "fc" for group in groups), "the classifier output must never be pruned"
    pruned = copy.deepcopy(model)
    history = prune_channels(pruned, (1, 28, 28), {g.leader: 0.5 for g in groups})
    x = torch.randn(3, 1, 28, 28)
    out = pruned(x)
    assert out.shape == (3, 10)
    before = {s.name: s.out_channels for s in discover_layers(model, (1, 28, 28))}
    after = {s.name: s.out_channels for s in discover_layers(pruned, (1, 28, 28))}
    for group in groups:
        for member in group.members:
            assert after[member] >= 1
            if before[member] == group.channels:  # concat inputs hold a share of the group's channels
                assert after[member] == kept_channels(group.channels, 0.5)
    rebuilt = net().eval()
    replay_pruning(rebuilt, (1, 28, 28), history)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt.eval()(x), out)


def test_residual_members_are_pruned_together() -> None:
    groups = {g.leader: g for g in channel_groups(Residual(), (1, 28, 28))}
    assert set(groups["stem"].members) == {"stem", "c2"}


def test_concat_inputs_are_pruned_per_branch() -> None:
    model = ConcatConv().eval()
    groups = {g.leader: g.members for g in channel_groups(model, (1, 28, 28))}
    assert groups == {"a.0": ("a.0",), "b.0": ("b.0",), "mix": ("mix",)}
    prune_channels(model, (1, 28, 28), {"a.0": 0.5})
    assert (model.a[0].out_channels, model.a[1].num_features, model.b[0].out_channels) == (3, 3, 10)
    assert model.mix.in_channels == 13 and model.mix.out_channels == 12
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_pruning_the_expand_conv_shrinks_the_depthwise_conv_and_its_batchnorm() -> None:
    model = _randomise_batchnorm(Inverted()).eval()
    groups = {g.leader: g for g in channel_groups(model, (1, 28, 28))}
    expand, expand_bn, _, depthwise, depthwise_bn, _, project, _ = model.same.block
    assert groups["same.block.0"].members == ("same.block.0", "same.block.3")  # expand + depthwise
    assert groups["down.block.6"].members == ("down.block.6", "same.block.6")  # projections joined by the add
    prune_channels(model, (1, 28, 28), {"same.block.0": 0.25, "down.block.6": 0.5})
    assert expand.out_channels == expand_bn.num_features == 12
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == depthwise_bn.num_features == 12
    assert tuple(depthwise.weight.shape) == (12, 1, 3, 3) and project.in_channels == 12
    assert model.down.block[6].out_channels == project.out_channels == expand.in_channels == 6
    assert model.fc.in_features == 6 and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_kept_channels_rounding() -> None:
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(64, 0.3, multiple=8) == 16
    assert kept_channels(10, 0.01) == 1
    assert kept_channels(6, 0.1, multiple=8) == 6
    assert kept_channels(64, 1.0, multiple=8) == 64


def test_keep_one_prunes_nothing() -> None:
    model = Residual()
    assert prune_channels(model, (1, 28, 28), {"stem": 1.0}) == []
