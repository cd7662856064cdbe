"""Channel shortcuts Torch-Pruning's dependency graph mis-tracks: named errors, or the group is skipped."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from core.errors import UsageError
from methods.structured import ChannelPruningError, channel_groups, prune_channels, replay_pruning

SHAPE = (1, 12, 12)


class Tail(nn.Module):
    """``head`` produces 8 channels that ``mix`` combines in a user-specific way, then a sound conv ``tail``."""

    def __init__(self, mix_in: int = 8, head_groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 3, padding=1, groups=head_groups)
        self.tail = nn.Conv2d(mix_in, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.fc(torch.relu(self.tail(self.mix(x))).mean(dim=(2, 3)))


class Roll(Tail):
    """Residual add of a channel-rolled branch: the graph pairs channel i with i, silently wrong."""

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.roll(self.head(x), 1, dims=1)


class Chunk(Tail):
    """``chunk`` of the channels into halves added together: the pruned model no longer runs."""

    def __init__(self) -> None:
        super().__init__(mix_in=4)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.head(x).chunk(2, dim=1)
        return first + second


class SpatialGate(Tail):
    """A one-channel gate broadcast over all channels (CBAM-style): Torch-Pruning fails while scoring."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Conv2d(8, 1, 3, padding=1)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x * torch.sigmoid(self.gate(x))


class Grouped(Tail):
    """A grouped (non-depthwise) conv ``head``: pruning its input channels fails inside Torch-Pruning."""

    def __init__(self) -> None:
        super().__init__(head_groups=2)


class GroupedUnbalanced(Grouped):
    """The same, with the weakest outputs all in the first group: the graph re-deals outputs to groups."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.head.weight[:4] *= 0.01


CASES = [
    (Roll, "stem", "changed what the kept channels compute"),
    (Chunk, "head", "left a model that no longer runs"),
    (SpatialGate, "head", r"failed inside Torch-Pruning \(IndexError"),
    (Grouped, "stem", "failed inside Torch-Pruning"),
    (GroupedUnbalanced, "head", "changed what the kept channels compute"),
]


@pytest.mark.parametrize(("net", "leader", "problem"), CASES)
def test_a_mis_tracked_shortcut_raises_a_usage_error_naming_the_group(
    net: type[Tail], leader: str, problem: str
) -> None:
    torch.manual_seed(0)
    model = net().eval()
    with pytest.raises(ChannelPruningError, match=f"group led by '{leader}' {problem}.*channel_pruning: false") as info:
        prune_channels(model, SHAPE, {leader: 0.5})
    assert isinstance(info.value, UsageError) and info.value.leader == leader


@pytest.mark.parametrize(("net", "leader", "problem"), CASES)
def test_channel_groups_skips_only_the_broken_group(
    net: type[Tail], leader: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = net().eval()
    with caplog.at_level(logging.WARNING, logger="methods.structured"):
        groups = channel_groups(model, SHAPE)
    leaders = [group.leader for group in groups]
    assert leader not in leaders and "tail" in leaders
    assert f"leaving channel group '{leader}' unpruned" in caplog.text
    pruned = copy.deepcopy(model)
    history = prune_channels(pruned, SHAPE, {name: 0.5 for name in leaders})
    assert pruned.tail.out_channels == 3
    rebuilt = net().eval()
    replay_pruning(rebuilt, SHAPE, history)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, *SHAPE)
    assert torch.equal(rebuilt(x), pruned(x))


def test_sound_models_keep_every_group() -> None:
    torch.manual_seed(0)
    assert [group.leader for group in channel_groups(Tail().eval(), SHAPE)] == ["stem", "head", "tail"]
