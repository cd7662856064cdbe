"""Pruning saliencies: magnitude, Optimal Brain Damage (Hessian diagonal) and first-order Taylor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from methods.pruning import lowest_mask
from methods.saliency import saliency_scores
from methods.saliency.obd import hessian_diagonal, squared_error_hessian


def _exact_hessian_diagonal(layer: nn.Linear, loss_of_weight) -> torch.Tensor:
    flat = layer.weight.detach().reshape(-1).clone()
    hessian = torch.autograd.functional.hessian(lambda w: loss_of_weight(w.reshape(layer.weight.shape)), flat)
    return torch.diagonal(hessian).reshape(layer.weight.shape)


def test_obd_on_a_quadratic_model_ranks_weights_as_the_exact_hessian_does() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x = torch.randn(40, 6) * torch.tensor([0.1, 3.0, 1.0, 0.5, 2.0, 0.01])  # very different input scales
    y = torch.randn(40, 3)

    def loss(weight: torch.Tensor) -> torch.Tensor:  # mean of ||Wx + b - y||^2 / 2: quadratic in W
        return 0.5 * (F.linear(x, weight, layer.bias.detach()) - y).square().sum(1).mean()

    exact = _exact_hessian_diagonal(layer, loss)
    ours = hessian_diagonal(nn.Sequential(layer), ["0.weight"], x, squared_error_hessian)["0.weight"]
    assert torch.allclose(ours, exact, rtol=1e-4, atol=1e-6)
    obd_exact = 0.5 * exact * layer.weight.detach() ** 2
    obd = 0.5 * ours * layer.weight.detach() ** 2
    assert torch.equal(torch.argsort(obd.reshape(-1)), torch.argsort(obd_exact.reshape(-1)))
    for sparsity in (0.25, 0.5, 0.75):
        assert torch.equal(lowest_mask(obd, sparsity), lowest_mask(obd_exact, sparsity))
    magnitude = saliency_scores(nn.Sequential(layer), ["0"], "magnitude")["0"]
    assert not torch.equal(lowest_mask(magnitude, 0.5), lowest_mask(obd_exact, 0.5))  # the criteria differ here


def test_cross_entropy_diagonal_is_the_exact_hessian_for_softmax_regression() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 4)
    x, labels = torch.randn(30, 5), torch.randint(0, 4, (30,))

    def loss(weight: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(x, weight, layer.bias.detach()), labels)

    exact = _exact_hessian_diagonal(layer, loss)
    scores = saliency_scores(nn.Sequential(layer), ["0"], "obd", TensorDataset(x, labels))["0"]
    assert torch.allclose(scores, 0.5 * exact * layer.weight.detach() ** 2, rtol=1e-4, atol=1e-7)


def test_taylor_is_the_squared_first_order_loss_change() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, labels = torch.randn(50, 5), torch.randint(0, 3, (50,))
    scores = saliency_scores(model, ["0", "2"], "taylor", TensorDataset(x, labels), batch_size=16)
    F.cross_entropy(model(x), labels).backward()
    for name in ("0", "2"):
        weight = model.get_submodule(name).weight
        assert torch.allclose(scores[name], (weight.grad * weight.detach()) ** 2, rtol=1e-4, atol=1e-10)


def test_conv_network_hessian_matches_autograd_for_one_layer() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x, labels = torch.randn(6, 1, 6, 6), torch.randint(0, 2, (6,))
    ours = hessian_diagonal(model, ["0.weight", "3.weight"], x)
    assert ours["0.weight"].shape == model[0].weight.shape and bool((ours["0.weight"] >= 0).all())
    exact = _exact_hessian_diagonal(
        model[3], lambda w: F.cross_entropy(F.linear(model[:3](x), w, model[3].bias.detach()), labels)
    )  # the last layer is linear in its weights, so Gauss-Newton equals the Hessian there
    assert torch.allclose(ours["3.weight"], exact, rtol=1e-4, atol=1e-7)


def test_data_driven_saliencies_need_data_and_names_are_checked() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="calibration data"):
        saliency_scores(model, ["0"], "taylor")
    with pytest.raises(ValueError, match="unknown saliency"):
        saliency_scores(model, ["0"], "random")


def test_earlier_pruned_weights_go_first() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    previous = torch.tensor([True, True, True, False, True])
    assert lowest_mask(scores, 0.4, previous).tolist() == [True, False, True, False, True]
    assert lowest_mask(scores, 0.4).tolist() == [True, False, True, True, False]
