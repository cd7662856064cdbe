"""Truncated-SVD factorisation of Linear and Conv2d layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.lowrank import (
    factorisable,
    factorise,
    factorise_layers,
    full_rank,
    rank_for,
    replay_factorisation,
    saves_parameters,
)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(12, 7),
        nn.Linear(5, 9, bias=False),
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, (3, 1), padding=(1, 0), dilation=2, bias=False),
    ],
    ids=["linear", "linear-nobias", "conv", "conv-dilated"],
)
def test_full_rank_reproduces_the_layer(layer: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, layer.in_features) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 9, 9)
    factors = factorise(layer, full_rank(layer))
    with torch.no_grad():
        assert torch.allclose(factors(x), layer(x), atol=1e-5)


def test_truncation_is_the_best_low_rank_approximation() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 16, bias=False)
    factors = factorise(layer, 4)
    product = factors[1].weight @ factors[0].weight
    s = torch.linalg.svdvals(layer.weight.detach().double())
    error = torch.linalg.matrix_norm((product - layer.weight).double())
    assert torch.isclose(error, s[4:].square().sum().sqrt(), rtol=1e-4)  # Eckart-Young
    assert torch.linalg.matrix_rank(product.detach()) == 4


def test_ranks_and_eligibility() -> None:
    conv = nn.Conv2d(8, 16, 3)
    assert full_rank(conv) == 16 and rank_for(conv, 0.25) == 4 and rank_for(conv, 0.01) == 1
    assert saves_parameters(conv, 4) and not saves_parameters(conv, 16)
    assert not factorisable(nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(ValueError, match="rank"):
        factorise(conv, 17)


def test_factorise_layers_skips_what_would_not_shrink_and_replays() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
    done = factorise_layers(model, {"0": 0.75, "1": 0.5, "3": 0.5})
    assert done == {"3": 5}  # the 1->8 conv would grow (6 * (8 + 9) > 72) and the depthwise one is left alone
    assert isinstance(model[3], nn.Sequential) and isinstance(model[0], nn.Conv2d)
    fresh = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
    replay_factorisation(fresh, done)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
