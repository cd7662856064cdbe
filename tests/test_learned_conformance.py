"""Every learned-sparsity method in the registry keeps the model's structure, is seeded, and removes nothing
without a penalty and something with a strong one (an elastic one, a supernet, removes nothing at all)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn.utils import parametrize

from methods.coupled_channels import coupled_channels
from methods.learned import LEARNED, LearnedSettings, Target, learn
from methods.structured import channel_groups
from tests.fixtures.tiny_nets import INPUT_SHAPE, tiny_cnn, tiny_data

KEYS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_cnn()


def _on_cnn(names: list[str]) -> list[str]:
    """The methods that train the tiny CNN (an input-selection method needs a Linear first layer)."""
    cnn = tiny_cnn()
    return [n for n in names if LEARNED[n].applies_to(cnn, Target(KEYS, [], tiny_data())) is None]


CNN_METHODS = _on_cnn(LEARNED.names())


def _target(model: torch.nn.Module) -> Target:
    groups = coupled_channels(model, INPUT_SHAPE, [g.leader for g in channel_groups(model, INPUT_SHAPE)])
    return Target(KEYS, groups, tiny_data())


def _zeros(model: torch.nn.Module) -> int:
    return sum(int((model.get_parameter(key) == 0).sum()) for key in KEYS)


@pytest.mark.parametrize("name", CNN_METHODS)
def test_learned_method_keeps_structure_and_is_seeded(name: str, model: torch.nn.Module) -> None:
    settings = LearnedSettings(epochs=3, strength=1.0, batch_size=32, seed=3)
    first, outcome = learn(model, name, _target(model), settings)
    second, _ = learn(model, name, _target(model), settings)
    assert outcome.seconds > 0 and LEARNED[name].description
    before, after = model.state_dict(), first.state_dict()
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    for module in first.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks  # noqa: SLF001
        assert not parametrize.is_parametrized(module)
    again = second.state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)
    assert not first.training and torch.isfinite(first(tiny_data().tensors[0])).all()
    assert _zeros(model) == 0 and not torch.equal(before["conv1.weight"], after["conv1.weight"])  # trained a copy


@pytest.mark.parametrize("name", [n for n in CNN_METHODS if not LEARNED[n].elastic])
def test_learned_method_removes_more_with_a_stronger_penalty(name: str, model: torch.nn.Module) -> None:
    settings = [LearnedSettings(epochs=20, lr=1e-2, strength=s, batch_size=32) for s in (0.0, 200.0)]
    removed = [_zeros(learn(model, name, _target(model), setting)[0]) for setting in settings]
    total = sum(model.get_parameter(key).numel() for key in KEYS)
    assert removed[1] > removed[0] and removed[1] > 0.2 * total


@pytest.mark.parametrize("name", [n for n in CNN_METHODS if LEARNED[n].elastic])
def test_elastic_method_removes_nothing(name: str, model: torch.nn.Module) -> None:
    trained, _ = learn(model, name, _target(model), LearnedSettings(epochs=2, batch_size=32))
    target = _target(trained)
    params = dict(trained.named_parameters())
    assert _zeros(trained) == 0 and not any(bool(g.dead(params).any()) for g in target.groups)


@pytest.mark.parametrize("name", sorted(set(LEARNED.names()) - set(CNN_METHODS)))
def test_a_method_that_refuses_the_cnn_keeps_structure_and_removes_more_on_an_mlp(name: str) -> None:
    from tests.fixtures.tiny_mlp import tiny_mlp

    mlp, keys = tiny_mlp(), ("1.weight", "3.weight")
    assert LEARNED[name].applies_to(mlp, Target(keys, [], tiny_data())) is None
    settings = LearnedSettings(epochs=2, strength=1.0, batch_size=32, seed=3)
    first, outcome = learn(mlp, name, Target(keys, [], tiny_data()), settings)
    second, _ = learn(mlp, name, Target(keys, [], tiny_data()), settings)
    assert outcome.seconds > 0 and LEARNED[name].description and not first.training
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                  strict=True))
    assert not any(parametrize.is_parametrized(m) for m in first.modules())
    removed = [int((learn(mlp, name, Target(keys, [], tiny_data()), replace(settings, strength=s))[0]
                    .get_parameter("1.weight") == 0).sum()) for s in (0.0, 2.0)]
    assert removed[0] == 0 < removed[1]


@pytest.mark.parametrize("factory", ["row_lstm", "conv_gru", "tiny_vit"])
@pytest.mark.parametrize("name", CNN_METHODS)
def test_learned_method_trains_recurrent_and_attention_models(name: str, factory: str) -> None:
    from torch.utils.data import TensorDataset

    from methods.discovery import discover_layers
    from methods.layer_kinds import weight_keys
    from tests.fixtures import sequence_models

    torch.manual_seed(0)
    model = getattr(sequence_models, factory)().eval()
    shape = (1, 28, 28)
    keys = [k for spec in discover_layers(model, shape) for k in weight_keys(model, spec.name)]
    groups = coupled_channels(model, shape, [g.leader for g in channel_groups(model, shape)])
    data = TensorDataset(torch.randn(64, *shape), torch.randint(0, 10, (64,)))
    trained, _ = learn(model, name, Target(keys, groups, data), LearnedSettings(epochs=1, batch_size=32))
    before, after = model.state_dict(), trained.state_dict()
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    assert not any(parametrize.is_parametrized(m) for m in trained.modules())
    assert torch.isfinite(trained(data.tensors[0][:4])).all()
