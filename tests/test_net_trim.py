"""Net-Trim (methods/saliency/net_trim.py): pruning that keeps each layer's outputs on calibration data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.policy import LayerChoice, Policy
from methods.pipeline import Refinement, compress
from methods.pruning import lowest_mask
from methods.saliency import ScoreCache, saliency_refit, saliency_scores
from methods.saliency.net_trim import _columns, gram_matrices, refit_columns
from search import load_model
from tests.fixtures.tiny_nets import INPUT_SHAPE, TinyCNN, tiny_cnn, tiny_data


def _redundant_layer() -> tuple[nn.Module, TensorDataset]:
    """A Linear layer whose 6 inputs span only 4 dimensions (x4 = x0 + x1, x5 = x2 - x3): two weights per output
    can go at no cost to its outputs, whatever their size."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(400, 4, generator=generator)
    inputs = torch.cat([base, base[:, :1] + base[:, 1:2], base[:, 2:3] - base[:, 3:4]], dim=1)
    layer = nn.Linear(6, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 6, generator=generator))
    return nn.Sequential(layer), TensorDataset(inputs, torch.zeros(400, dtype=torch.long))


def _output_error(model: nn.Module, pruned: nn.Module, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs) - pruned(inputs)).pow(2).mean() / model(inputs).pow(2).mean())


def _pruned(model: nn.Module, data: TensorDataset, criterion: str, sparsity: float) -> nn.Module:
    pruned = _copy(model)
    scores = saliency_scores(pruned, ["0"], criterion, data)
    mask = lowest_mask(scores["0"], sparsity)
    saliency_refit(pruned, {"0": mask}, criterion, data)
    with torch.no_grad():
        pruned[0].weight.mul_(mask)
    return pruned


def _copy(model: nn.Module) -> nn.Module:
    clone = nn.Sequential(nn.Linear(6, 3))
    clone.load_state_dict(model.state_dict())
    return clone


def test_redundant_inputs_are_trimmed_without_changing_the_outputs() -> None:
    """At 1/3 sparsity Net-Trim removes redundant weights and refits the rest: the outputs stay (to rounding);
    magnitude pruning of the same count changes them."""
    model, data = _redundant_layer()
    trimmed = _pruned(model, data, "net_trim", 1 / 3)
    by_size = _pruned(model, data, "magnitude", 1 / 3)
    assert int((trimmed[0].weight == 0).sum()) == int((by_size[0].weight == 0).sum()) == 6
    assert _output_error(model, trimmed, data.tensors[0]) < 1e-8
    assert _output_error(model, by_size, data.tensors[0]) > 1e-2


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_net_trim_keeps_a_conv_nets_layer_outputs_closer_than_magnitude(sparsity: float) -> None:
    """One-shot, no fine-tune: each trimmed layer's outputs on the calibration data stay closer to the original's."""
    model, data = tiny_cnn(), tiny_data(256)
    outputs = {}
    for criterion in ("net_trim", "magnitude"):
        policy = Policy.from_choices({name: LayerChoice(sparsity, 32) for name in ("conv2", "fc1")}, criterion)
        refinement = Refinement(saliency_data=data)
        pruned = compress(model, policy, input_shape=INPUT_SHAPE, source={"task": "test"}, refinement=refinement)
        outputs[criterion] = _layer_outputs(pruned.model, data.tensors[0])
    original = _layer_outputs(model, data.tensors[0])
    for name in ("conv2", "fc1"):
        errors = {criterion: float((out[name] - original[name]).pow(2).mean()) for criterion, out in outputs.items()}
        assert errors["net_trim"] < 0.8 * errors["magnitude"], (name, errors)


def _layer_outputs(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of ``conv2`` and ``fc1`` in ``model`` (each fed by the model's own earlier layers)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, o))
             for name in ("conv2", "fc1")]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("layer", [
    nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1),
    nn.Conv2d(3, 4, (3, 2), padding=(2, 1), dilation=2, padding_mode="reflect", bias=False),
    nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
    nn.Linear(9, 4),
])
def test_the_layer_inputs_reproduce_the_layer(layer: nn.Module) -> None:
    """``X W^T + b`` from the im2col rows equals the layer's output: the Gram matrix is that of its true inputs."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9) if isinstance(layer, nn.Conv1d) else torch.randn(2, 3, 9, 9)
    if isinstance(layer, nn.Linear):
        x = torch.randn(2, 5, 9)
    out = layer(x)
    rows = _columns(layer, x) @ layer.weight.reshape(layer.weight.shape[0], -1).T
    if layer.bias is not None:
        rows = rows + layer.bias
    expected = out.reshape(-1, out.shape[-1]) if isinstance(layer, nn.Linear) else out.movedim(1, -1).reshape(
        -1, out.shape[1])
    assert torch.allclose(rows, expected, atol=1e-5)


def test_the_refit_is_the_least_squares_fit_on_the_support() -> None:
    """The residual ``G (W - W0)`` vanishes on every column's kept entries."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(200, 7, generator=generator, dtype=torch.float64)
    gram, w0 = x.T @ x / 200, torch.randn(7, 5, generator=generator, dtype=torch.float64)
    support = torch.rand(7, 5, generator=generator) > 0.4
    w = refit_columns(gram, w0, support)
    assert bool((w[~support] == 0).all())
    residual = gram @ (w - w0)
    assert float(residual[support].abs().max()) < 1e-6


def test_scores_are_cached_per_model_state_and_data() -> None:
    model, data = _redundant_layer()
    cache = ScoreCache(size=2)
    first = saliency_scores(model, ["0"], "net_trim", data, cache=cache)
    assert len(cache) == 1
    again = saliency_scores(model, ["0"], "net_trim", data, cache=cache)
    assert len(cache) == 1 and torch.equal(first["0"], again["0"])
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
    saliency_scores(model, ["0"], "net_trim", data, cache=cache)
    saliency_scores(model, ["0"], "net_trim", TensorDataset(data.tensors[0][:100], data.tensors[1][:100]),
                    cache=cache)
    assert len(cache) == 2  # two new states, the oldest dropped
    saliency_scores(model, ["0"], "magnitude", data, cache=cache)
    assert len(cache) == 2  # criteria without data are not cached


def test_gram_matrices_leave_the_model_as_it_was() -> None:
    model = tiny_cnn().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    grams = gram_matrices(model, {"fc1.weight": model.fc1}, tiny_data(32), batch_size=8)
    assert grams["fc1.weight"].shape == (129, 129) and model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_net_trim_policy_compresses_and_reloads_exactly(tmp_path: Path) -> None:
    model = tiny_cnn()
    policy = Policy.from_choices({name: LayerChoice(0.7, 4) for name in ("conv1", "conv2", "fc1", "fc2")}, "net_trim")
    compressed = compress(model, policy, input_shape=INPUT_SHAPE, source={"task": "test"},
                          refinement=Refinement(saliency_data=tiny_data(64)))
    path = tmp_path / "t.acz"
    path.write_bytes(compressed.blob)
    x = torch.randn(3, *INPUT_SHAPE)
    with torch.inference_mode():
        assert torch.equal(load_model(path, model=TinyCNN())(x), compressed.model(x))
