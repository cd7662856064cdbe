"""Early-bird tickets (methods/learned/early_bird.py): the channel mask is drawn once it stops changing."""

from __future__ import annotations

import torch

from methods.coupled_channels import coupled_channels
from methods.learned import LearnedSettings, Target, learn
from methods.learned.early_bird import DISTANCE, WINDOW, mask_distance, ticket_mask
from methods.structured import channel_groups
from tests.fixtures.tiny_nets import INPUT_SHAPE, TinyCNN, tiny_cnn, tiny_data

KEYS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")


def _target(model: torch.nn.Module, initial: dict[str, torch.Tensor] | None = None) -> Target:
    groups = coupled_channels(model, INPUT_SHAPE, [g.leader for g in channel_groups(model, INPUT_SHAPE)])
    return Target(KEYS, groups, tiny_data(), initial=initial)


def test_the_mask_ranks_channels_over_the_whole_network_and_keeps_one_per_group() -> None:
    scales = {"a": torch.tensor([0.1, 0.2, 3.0, 4.0]), "b": torch.tensor([0.3, 0.4, 0.5, 0.6]),
              "c": torch.tensor([0.01, 0.02])}
    mask = ticket_mask(scales, 0.5)
    assert mask["a"].tolist() == [False, False, True, True]
    assert mask["b"].tolist() == [False, True, True, True]
    assert mask["c"].tolist() == [False, True]  # all below the threshold: its largest one stays
    assert mask_distance(mask, mask) == 0.0
    other = {**mask, "a": torch.tensor([True, False, True, True])}
    assert mask_distance(mask, other) == 0.1  # one of ten channels


def test_the_ticket_is_drawn_early_and_its_channels_are_removed() -> None:
    """With the masks settled, the draw happens long before the budget ends; the removed channels are exactly zero
    and the ticket, trained on alone, still fits the data."""
    model = tiny_cnn()
    settings = LearnedSettings(epochs=40, lr=1e-2, strength=1.0, batch_size=32)
    trained, outcome = learn(model, "early_bird", _target(model), settings)
    epoch = float(outcome.statistics["early_bird:epoch"])
    assert WINDOW <= epoch < 40
    params = dict(trained.named_parameters())
    groups = _target(model).groups
    removed = sum(int(group.dead(params).sum()) for group in groups)
    total = sum(group.channels for group in groups)
    assert removed >= 0.45 * total
    data = tiny_data()
    accuracy = float((trained(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean())
    assert accuracy > 0.9


def test_a_known_initial_state_is_where_training_starts() -> None:
    torch.manual_seed(5)
    initial = {k: v.clone() for k, v in TinyCNN().state_dict().items()}
    model = tiny_cnn()
    settings = LearnedSettings(epochs=0.01, lr=1e-9, strength=0.0, batch_size=32)  # one step that changes nothing
    trained, _ = learn(model, "early_bird", _target(model, initial), settings)
    for key in KEYS:
        assert torch.allclose(trained.get_parameter(key), initial[key], atol=1e-5)
    assert DISTANCE < 1
