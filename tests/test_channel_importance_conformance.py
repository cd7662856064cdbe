"""Conformance suite: every registered channel-importance criterion (methods.channel_importance).

On a small residual network, a criterion's scorer gives one finite score per channel of every group,
the same for the same seed; pruning by it keeps the output shape, passes the post-step output check
of ``prune_channels`` and replays exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from core.registry import UnknownEntryError
from methods.channel_importance import CHANNEL_IMPORTANCES, ChannelImportance, check_channel_importance
from methods.structured import channel_groups, prune_channels, replay_pruning

ENTRIES = CHANNEL_IMPORTANCES.items()
IDS = [name for name, _ in ENTRIES]
SHAPE = (1, 10, 10)


class Residual(nn.Module):
    """Conv-BN stem, a conv-BN-ReLU-conv-BN block added to it, global pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.c2, self.b2 = nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Residual()
    generator = torch.Generator().manual_seed(seed + 1)
    for bn in (model.bn, model.b1, model.b2):  # distinct BatchNorm scales and statistics
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=generator) + 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    return model.eval()


def _data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(n, *SHAPE, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def _scores(model: nn.Module, criterion: ChannelImportance) -> list[tuple[int, torch.Tensor | None]]:
    """``(channels, scores)`` of every full channel group, in Torch-Pruning's order."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE))
    if criterion.needs_data:
        inputs, labels = _data()
        F.cross_entropy(model(inputs), labels).backward()
    scorer = criterion.scorer()
    try:
        return [
            (graph.get_out_channels(group[0].dep.target.module), scorer(group))
            for group in graph.get_all_groups(ignored_layers=[model.fc])
        ]
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("name", "criterion"), ENTRIES, ids=IDS)
def test_one_finite_score_per_channel_of_every_group(name: str, criterion: ChannelImportance) -> None:
    assert isinstance(criterion, ChannelImportance)
    groups = _scores(_model(), criterion)
    assert sorted(channels for channels, _ in groups) == [8, 12]  # stem + c2 (residual add), c1
    for channels, scores in groups:
        assert scores is not None, f"{name} scores nothing in a group with BatchNorm"
        assert scores.shape == (channels,)
        assert bool(torch.isfinite(scores).all())


@pytest.mark.parametrize(("name", "criterion"), ENTRIES, ids=IDS)
def test_scores_are_the_same_for_the_same_seed(name: str, criterion: ChannelImportance) -> None:
    first, second = _scores(_model(), criterion), _scores(_model(), criterion)
    assert all(torch.equal(one, other) for (_, one), (_, other) in zip(first, second, strict=True))


@pytest.mark.parametrize(("name", "criterion"), ENTRIES, ids=IDS)
def test_pruning_by_the_criterion_passes_the_output_check_and_replays(name: str, criterion: ChannelImportance) -> None:
    model = _model()
    leaders = [group.leader for group in channel_groups(model, SHAPE)]
    assert leaders == ["stem", "c1"]
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        shape = model(x).shape
    history = prune_channels(model, SHAPE, {"stem": 0.5, "c1": 0.25}, importance=name, data=_data())  # checked
    assert (model.stem.out_channels, model.c1.out_channels, model.c2.out_channels) == (4, 3, 4)
    rebuilt = Residual().eval()
    replay_pruning(rebuilt, SHAPE, history)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert model(x).shape == shape
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(("name", "criterion"), ENTRIES, ids=IDS)
def test_criteria_that_need_data_ask_for_it(name: str, criterion: ChannelImportance) -> None:
    if not criterion.needs_data:
        assert prune_channels(_model(), SHAPE, {"stem": 0.5}, importance=name)  # no data needed
        return
    with pytest.raises(ValueError, match=f"the '{name}' channel importance needs calibration data"):
        prune_channels(_model(), SHAPE, {"stem": 0.5}, importance=name)


def test_unknown_names_are_rejected_naming_every_choice() -> None:
    with pytest.raises(UnknownEntryError, match="unknown channel importance 'l3'; choose one of: " + ", ".join(IDS)):
        check_channel_importance("l3")
    assert all(check_channel_importance(name) is criterion for name, criterion in ENTRIES)
