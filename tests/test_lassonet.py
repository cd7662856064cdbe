"""LassoNet input selection (Lemhadri et al. 2021): the path finds the informative features (the paper's claim,
tiny), the model keeps exactly the selected inputs' columns, and models it cannot select for are refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from core.errors import UsageError
from methods.learned import LEARNED, LearnedSettings, Target, learn
from methods.learned.lassonet import select_features
from tests.fixtures.tiny_mlp import tiny_mlp
from tests.fixtures.tiny_nets import tiny_cnn, tiny_data

KEYS = ("1.weight", "3.weight")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_path_keeps_the_informative_features(seed: int) -> None:
    """Three classes from a nonlinear function of features 0-2; features 3-9 are noise: the path keeps exactly 0-2."""
    inputs = torch.randn(600, 10, generator=torch.Generator().manual_seed(seed))
    x = inputs[:, :3]
    labels = torch.stack([x[:, 0] * x[:, 1], x[:, 1] + x[:, 2], -x[:, 0] - x[:, 2]], 1).argmax(1)
    mask = select_features(inputs, labels, hidden=16, k=3, seed=seed)
    assert mask.tolist() == [True] * 3 + [False] * 7


def test_the_model_keeps_exactly_the_selected_inputs() -> None:
    model, data = tiny_mlp(), tiny_data()
    settings = LearnedSettings(epochs=2, batch_size=32, strength=1.0)
    trained, outcome = learn(model, "lassonet", Target(KEYS, [], data), settings)
    again, _ = learn(model, "lassonet", Target(KEYS, [], data), settings)
    selected = outcome.statistics["lassonet:selected"].bool()
    assert int(selected.sum()) == 16  # ceil(64 * 0.25)
    weight = trained.get_parameter("1.weight")
    assert bool((weight[:, ~selected] == 0).all()) and bool((weight[:, selected] != 0).all())
    assert torch.equal(weight, again.get_parameter("1.weight"))
    everything, _ = learn(model, "lassonet", Target(KEYS, [], data), LearnedSettings(epochs=1, strength=0.0))
    assert int((everything.get_parameter("1.weight") == 0).sum()) == 0


def test_models_without_an_input_linear_or_class_labels_are_refused() -> None:
    method = LEARNED["lassonet"]
    refusal = method.applies_to(tiny_cnn(), Target(("conv1.weight",), [], tiny_data()))
    assert refusal is not None and "'conv1' is a Conv2d" in refusal and "\n" not in refusal
    floats = TensorDataset(torch.randn(32, 1, 8, 8), torch.randn(32))
    assert "classification" in (method.applies_to(tiny_mlp(), Target(KEYS, [], floats)) or "")
    with pytest.raises(UsageError, match="Conv2d"):
        learn(tiny_cnn(), "lassonet", Target(("conv1.weight",), [], tiny_data()), LearnedSettings(epochs=1))
