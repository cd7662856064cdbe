"""Conformance suite: every registered pruning saliency (methods.saliency.SALIENCIES).

Scores have each weight's shape, are finite and non-negative, repeat exactly and leave the model as
it was; pruning by them removes exactly the requested count; and a criterion that vanishes at zero
never keeps a zeroed weight over a non-zero one of the same layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.registry import UnknownEntryError
from methods.pruning import lowest_mask, pruned_count
from methods.saliency import SALIENCIES, Saliency, check_saliency, saliency_scores

ENTRIES = SALIENCIES.items()
IDS = [name for name, _ in ENTRIES]
LAYERS = ["0", "3"]


def _model() -> nn.Module:
    """A conv and a linear layer with a smooth activation, so no weight is dead for every sample."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


def _data(n: int = 24) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 2, 6, 6, generator=generator), torch.randint(0, 5, (n,), generator=generator))


@pytest.mark.parametrize(("name", "saliency"), ENTRIES, ids=IDS)
def test_scores_have_the_weights_shape_and_are_finite_and_non_negative(name: str, saliency: Saliency) -> None:
    assert isinstance(saliency, Saliency)
    model = _model()
    scores = saliency_scores(model, LAYERS, name, _data(), batch_size=8)
    assert list(scores) == LAYERS
    for layer in LAYERS:
        score = scores[layer]
        assert score.shape == model.get_submodule(layer).weight.shape
        assert not score.requires_grad
        assert bool(torch.isfinite(score).all()) and bool((score >= 0).all())


@pytest.mark.parametrize(("name", "saliency"), ENTRIES, ids=IDS)
def test_scores_repeat_exactly_and_leave_the_model_as_it_was(name: str, saliency: Saliency) -> None:
    """Also with a frozen layer: its flag stays off, and it is scored all the same."""
    model = _model().train()
    model[3].weight.requires_grad_(False)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    first = saliency_scores(model, LAYERS, name, _data(), batch_size=8)
    second = saliency_scores(model, LAYERS, name, _data(), batch_size=8)
    assert all(torch.equal(first[layer], second[layer]) for layer in LAYERS)
    assert model.training and not model[3].weight.requires_grad
    assert all(param.grad is None for param in model.parameters())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize(("name", "saliency"), ENTRIES, ids=IDS)
@pytest.mark.parametrize("sparsity", [0.1, 0.29, 0.5, 0.9])
def test_pruning_by_the_scores_removes_exactly_the_requested_count(
    name: str, saliency: Saliency, sparsity: float
) -> None:
    scores = saliency_scores(_model(), LAYERS, name, _data(), batch_size=8)
    for layer in LAYERS:
        mask = lowest_mask(scores[layer], sparsity)
        assert mask.shape == scores[layer].shape
        assert int((~mask).sum()) == pruned_count(scores[layer].numel(), sparsity)


@pytest.mark.parametrize(("name", "saliency"), ENTRIES, ids=IDS)
def test_zeroed_weights_never_outrank_non_zero_ones(name: str, saliency: Saliency) -> None:
    if not saliency.vanishes_at_zero:
        pytest.skip(f"{name} does not score by the weight's size")
    model = _model()
    zeros = {}
    with torch.no_grad():
        for layer in LAYERS:
            weight = model.get_submodule(layer).weight
            zeros[layer] = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) < 0.3
            weight[zeros[layer]] = 0.0
    scores = saliency_scores(model, LAYERS, name, _data(), batch_size=8)
    for layer in LAYERS:
        score, zero = scores[layer], zeros[layer]
        assert bool((score[zero] == 0).all())
        assert float(score[zero].max()) <= float(score[~zero].min())
        kept = lowest_mask(score, int(zero.sum()) / zero.numel())
        assert not bool(kept[zero].any()), "a zeroed weight was kept over a non-zero one"


@pytest.mark.parametrize(("name", "saliency"), ENTRIES, ids=IDS)
def test_data_driven_criteria_ask_for_data(name: str, saliency: Saliency) -> None:
    for data in (None, TensorDataset(torch.zeros(0, 2, 6, 6), torch.zeros(0, dtype=torch.long))):
        if saliency.needs_data:
            with pytest.raises(ValueError, match=f"the {name} saliency needs calibration data"):
                saliency_scores(_model(), LAYERS, name, data)
        else:
            assert set(saliency_scores(_model(), LAYERS, name, data)) == set(LAYERS)


def test_unknown_names_are_rejected_naming_every_choice() -> None:
    with pytest.raises(UnknownEntryError, match="unknown saliency 'random'; choose one of: " + ", ".join(IDS)):
        check_saliency("random")
    assert all(check_saliency(name) is saliency for name, saliency in ENTRIES)
