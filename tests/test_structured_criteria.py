"""Channel importance criteria of structured pruning: l1, l2, bn (BatchNorm scale) and taylor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from envs.tasks.mobilenet import InvertedResidual, conv_bn
from methods.channel_importance import CHANNEL_IMPORTANCES
from methods.structured import prune_channels, replay_pruning

SHAPE = (1, 8, 8)


class Scored(nn.Module):
    """Conv ``a`` (2x2 kernels, 4 channels) + BN, read by a 1x1 conv ``b`` that ignores channel 2.

    Channel scores of the group led by ``a`` (conv weights, BN gamma, ``b``'s input weights):
    L1 ``[44.5, 34.01, 80.02, 24.3]`` drops 3 and 1; L2 (squared) ``[404.25, 904, 1600, 104.09]``
    drops 3 and 0; ``|gamma|`` ``[0.5, 0.01, 0.02, 0.3]`` drops 1 and 2; channel 2 never reaches
    the loss, so its Taylor saliency is 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn = conv_bn(1, 4, 2)
        self.b = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 10)
        rows = [[1.0] * 4, [3.0, 0.0, 0.0, 0.0], [2.0] * 4, [0.5] * 4]
        with torch.no_grad():
            self.a.weight.copy_(10 * torch.tensor(rows).view(4, 1, 2, 2))
            self.bn.weight.copy_(torch.tensor([0.5, 0.01, -0.02, 0.3]))
            self.b.weight.fill_(1.0)
            self.b.weight[:, 2] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.bn(self.a(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _dropped(importance: str, model: nn.Module | None = None) -> list[int]:
    model = model or Scored().eval()
    history = prune_channels(model, SHAPE, {"a": 0.5}, importance=importance, data=_data())
    assert [entry[0] for entry in history] == ["a"]
    return history[0][2]


def test_magnitude_and_batchnorm_criteria_drop_the_channels_they_should() -> None:
    torch.manual_seed(0)
    assert _dropped("l1") == [1, 3]
    assert _dropped("l2") == [0, 3]
    assert _dropped("bn") == [1, 2]  # |gamma|: the negative -0.02 ranks above 0.01


def test_taylor_drops_a_channel_that_does_not_reach_the_loss() -> None:
    torch.manual_seed(0)
    dropped = _dropped("taylor")
    assert 2 in dropped and dropped != _dropped("l1")


def test_bn_falls_back_to_l1_without_batchnorm() -> None:
    torch.manual_seed(0)
    model = Scored().eval()
    model.bn = nn.Identity()
    assert _dropped("bn", copy.deepcopy(model)) == _dropped("l1", copy.deepcopy(model)) == [1, 3]


def test_taylor_needs_data_and_names_must_be_known() -> None:
    with pytest.raises(ValueError, match="'taylor' channel importance needs calibration data"):
        prune_channels(Scored(), SHAPE, {"a": 0.5}, importance="taylor")
    with pytest.raises(ValueError, match="pair of tensors"):
        prune_channels(Scored(), SHAPE, {"a": 0.5}, importance="taylor", data=(torch.zeros(1),))
    with pytest.raises(ValueError, match="unknown channel importance 'l3'.*l1, l2, bn, taylor"):
        prune_channels(Scored(), SHAPE, {"a": 1.0}, importance="l3")


class Mobile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8, 3), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 3), InvertedResidual(8, 12, 2, 3))
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("importance", CHANNEL_IMPORTANCES.names())
def test_every_criterion_gives_a_replayable_history_and_leaves_the_model_clean(importance: str) -> None:
    torch.manual_seed(0)
    model = Mobile().train()
    model.fc.weight.requires_grad_(False)
    keep = {"stem.0": 0.5, "blocks.0.block.0": 0.5, "blocks.1.block.0": 0.25}
    history = prune_channels(model, SHAPE, keep, importance=importance, data=_data())
    assert model.training and not model.fc.weight.requires_grad
    assert all(param.grad is None for param in model.parameters())
    assert model.blocks[1].block[3].out_channels == 6  # the depthwise conv followed its expand conv
    rebuilt = Mobile()
    replay_pruning(rebuilt, SHAPE, history)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(4, *SHAPE)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
