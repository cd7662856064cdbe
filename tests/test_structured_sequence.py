"""Structured pruning of attention heads and recurrent hidden units.

A pruned layer computes what the unpruned one does with the removed heads or units masked; the references here are
written from the layers' equations (not through the kinds' own masks). Pruned models reload bit for bit through
``load_model``, groups keep whole units, the fixtures' sequence models get channel choices, and the cases that
cannot be pruned exactly keep their channels with a warning saying why.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from core.policy import LayerChoice, Policy
from core.space import SearchSpace, SpaceSettings
from methods.packing import write_packed
from methods.pipeline import compress
from methods.structured import channel_groups, kept_channels, prune_channels
from search import load_model

MODELS = Path(__file__).resolve().parent / "fixtures" / "sequence_models.py"


class AttentionNet(nn.Module):
    """Tokens embedded by a linear layer, residual self-attention (4 heads of 4), mean, classifier."""

    def __init__(self, batch_first: bool = True, **options: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, **options)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        q = h if self.attn.batch_first else h.transpose(0, 1)
        a = self.attn(q, q, q, need_weights=False)[0]
        a = a if self.attn.batch_first else a.transpose(0, 1)
        return self.fc(torch.relu(a + h).mean(dim=1))


def _attention_with_heads(attn: nn.MultiheadAttention, h: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """The batch-first self-attention of ``attn`` on ``h`` computed head by head, summing only ``heads``."""
    embed, width = attn.embed_dim, attn.head_dim
    bias = attn.in_proj_bias if attn.in_proj_bias is not None else torch.zeros(3 * embed)
    q, k, v = (h @ attn.in_proj_weight.T + bias).split(embed, dim=-1)
    if attn.bias_k is not None:
        k = torch.cat([k, attn.bias_k.expand(h.shape[0], 1, embed)], dim=1)
        v = torch.cat([v, attn.bias_v.expand(h.shape[0], 1, embed)], dim=1)
    if attn.add_zero_attn:
        k, v = (torch.cat([t, torch.zeros(h.shape[0], 1, embed)], dim=1) for t in (k, v))
    heads_out = torch.zeros_like(q)
    for head in heads:
        part = slice(head * width, (head + 1) * width)
        scores = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(width), dim=-1)
        heads_out[..., part] = scores @ v[..., part]
    return nn.functional.linear(heads_out, attn.out_proj.weight, attn.out_proj.bias)


@pytest.mark.parametrize(
    ("batch_first", "options"), [(True, {}), (False, {}), (True, {"bias": False}),
                                 (True, {"add_bias_kv": True, "add_zero_attn": True})],
)
def test_attention_heads_are_removed_and_compute_the_masked_heads(batch_first: bool, options: dict) -> None:
    torch.manual_seed(0)
    model = AttentionNet(batch_first, **options).eval()
    (group,) = channel_groups(model, (5, 4))
    assert (group.leader, group.members, group.channels, group.unit) == ("embed", ("embed", "attn"), 16, 4)
    pruned = copy.deepcopy(model)
    history = prune_channels(pruned, (5, 4), {"embed": 0.5})
    (_, _, dropped), = history
    attn = pruned.attn
    assert (attn.num_heads, attn.head_dim, attn.embed_dim, attn.kdim, attn.vdim) == (2, 4, 8, 8, 8)
    assert attn.in_proj_weight.shape == (24, 8) and attn.out_proj.weight.shape == (8, 8)
    assert pruned.embed.out_features == 8 and pruned.fc.in_features == 8
    gone = sorted({i // 4 for i in dropped})
    assert sorted(dropped) == [h * 4 + j for h in gone for j in range(4)]  # whole heads
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        h = model.embed(x)
        h[..., dropped] = 0  # the features the group removes are read by no one
        a = _attention_with_heads(model.attn, h, [head for head in range(4) if head not in gone])
        y = torch.relu(a + h)
        y[..., dropped] = 0
        reference = model.fc(y.mean(dim=1))
        assert torch.allclose(pruned(x), reference, atol=1e-5)
        assert not torch.allclose(model(x), reference, atol=1e-3)  # the heads mattered


class Recurrent(nn.Module):
    """A two-layer recurrent layer over a (N, 7, 5) sequence, classifying from its last step."""

    def __init__(self, module_type: type[nn.RNNBase], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = module_type(5, 8, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(8 * (2 if bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def _step(rnn: nn.RNNBase, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weights: list[torch.Tensor]):
    """One step of an LSTM, GRU or RNN cell: the new hidden (and cell) state."""
    w_ih, w_hh, b_ih, b_hh = weights
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    if rnn.mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if rnn.mode == "GRU":
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        return (1 - z) * torch.tanh(ni + r * nh) + z * h, c
    return torch.tanh(gi + gh), c


def _masked_run(rnn: nn.RNNBase, x: torch.Tensor, units: list[int]) -> torch.Tensor:
    """The batch-first output of ``rnn`` on ``x`` stepped by hand, the hidden ``units`` of every layer and direction
    held at zero."""
    keep = torch.ones(rnn.hidden_size)
    keep[units] = 0
    inputs = x
    for layer in range(rnn.num_layers):
        outputs = []
        for suffix in ("", "_reverse")[: 2 if rnn.bidirectional else 1]:
            weights = [getattr(rnn, f"{part}_l{layer}{suffix}") for part in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")]
            h = c = torch.zeros(x.shape[0], rnn.hidden_size)
            steps = range(x.shape[1]) if not suffix else reversed(range(x.shape[1]))
            states = {}
            for t in steps:
                h, c = _step(rnn, inputs[:, t], h, c, weights)
                h = h * keep
                states[t] = h
            outputs.append(torch.stack([states[t] for t in range(x.shape[1])], dim=1))
        inputs = torch.cat(outputs, dim=-1)
    return inputs


@pytest.mark.parametrize("module_type", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_hidden_units_are_removed_and_compute_the_masked_units(
    module_type: type[nn.RNNBase], bidirectional: bool,
) -> None:
    torch.manual_seed(0)
    model = Recurrent(module_type, bidirectional).eval()
    directions = 2 if bidirectional else 1
    (group,) = channel_groups(model, (7, 5))
    assert (group.leader, group.members, group.channels, group.unit) == ("rnn", ("rnn",), 8 * directions, directions)
    pruned = copy.deepcopy(model)
    (_, _, dropped), = prune_channels(pruned, (7, 5), {"rnn": 0.5})
    units = sorted(i for i in dropped if i < 8)
    assert sorted(dropped) == sorted(d * 8 + j for d in range(directions) for j in units)  # both directions alike
    rnn, gates = pruned.rnn, {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[module_type]
    assert rnn.hidden_size == 4 and pruned.fc.in_features == 4 * directions
    assert rnn.weight_ih_l0.shape == (gates * 4, 5) and rnn.weight_hh_l0.shape == (gates * 4, 4)
    assert rnn.weight_ih_l1.shape == (gates * 4, 4 * directions) and rnn.bias_hh_l1.shape == (gates * 4,)
    x = torch.randn(3, 7, 5)
    with torch.no_grad():
        out = _masked_run(model.rnn, x, units)[:, -1]
        out[:, dropped] = 0
        reference = model.fc(out)
        assert torch.allclose(pruned(x), reference, atol=1e-5)
        assert not torch.allclose(model(x), reference, atol=1e-3)  # the units mattered


def _fixtures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sequence_models_for_pruning", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("build", "shape", "policy"),
    [
        (lambda: AttentionNet(), (5, 4), {"embed": LayerChoice(sparsity=0.3, bits=6, keep=0.5),
                                          "attn": LayerChoice(sparsity=0.3, bits=6), "fc": LayerChoice(bits=8)}),
        (lambda: _fixtures().row_lstm(), (1, 28, 28), {"rnn": LayerChoice(sparsity=0.5, bits=4, keep=0.5),
                                                       "fc": LayerChoice(bits=8)}),
    ],
    ids=["attention", "row_lstm"],
)
def test_a_pruned_model_reloads_bit_for_bit(build, shape: tuple[int, ...], policy: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build().eval()
    compressed = compress(model, Policy.from_choices(policy), input_shape=shape, source={"model": "test"})
    assert compressed.meta["history"]
    path = tmp_path / "model.acz"
    write_packed(path, compressed.blob)
    loaded = load_model(path, model=build())
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(loaded(x), compressed.model(x))
    assert {n: p.shape for n, p in loaded.named_parameters()} == {
        n: p.shape for n, p in compressed.model.named_parameters()}


def test_groups_keep_whole_units() -> None:
    assert kept_channels(16, 0.4, unit=4) == 8
    assert kept_channels(16, 0.3, multiple=8, unit=4) == 8
    assert kept_channels(24, 0.1, unit=12) == 12
    assert kept_channels(64, 0.5, multiple=8) == kept_channels(64, 0.5, multiple=8, unit=1) == 32


def test_the_fixtures_sequence_models_get_channel_choices(caplog: pytest.LogCaptureFixture) -> None:
    """The LSTM's hidden units are a group (the search space searches its keep ratio); the vision transformer's
    feed-forward layers are, and its attention heads are not: their features are the residual stream that the
    encoder's LayerNorms normalise, so removing them changes what the kept ones compute (a warning says so)."""
    fixtures = _fixtures()
    lstm = channel_groups(fixtures.row_lstm(), (1, 28, 28))
    assert [(g.leader, g.members, g.channels, g.unit) for g in lstm] == [("rnn", ("rnn",), 48, 1)]
    space = SearchSpace(("rnn", "fc"), tuple(g.leader for g in lstm), SpaceSettings())
    assert space.searches_keep and space.leaders == ("rnn",)
    with caplog.at_level(logging.WARNING):
        vit = channel_groups(fixtures.tiny_vit().eval(), (1, 28, 28))
    assert [g.leader for g in vit] == ["encoder.layers.0.linear1", "encoder.layers.1.linear1"]
    (warning,) = [r.getMessage() for r in caplog.records if "unpruned" in r.getMessage()]
    assert "'patch'" in warning and "LayerNorm" in warning


class CrossAttention(nn.Module):
    """Queries from one linear layer, keys and values of another size (``kdim``/``vdim``) from another."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(4, 16)
        self.memory = nn.Linear(4, 6)
        self.attn = nn.MultiheadAttention(16, 4, kdim=6, vdim=6, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = self.memory(x)
        return self.fc(self.attn(self.query(x), memory, memory, need_weights=False)[0].mean(dim=1))


class InputAttention(nn.Module):
    """Self-attention over the model's input itself, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(dim=1))


class OneHead(AttentionNet):
    """The attention model with a single head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 1, batch_first=True)


@pytest.mark.parametrize(
    ("model", "shape", "reason"),
    [(CrossAttention(), (5, 4), "kdim, vdim"), (InputAttention(), (5, 8), "reads the model's input"),
     (OneHead(), (5, 4), "single head")],
)
def test_attention_that_cannot_be_pruned_keeps_its_channels_with_a_reason(
    model: nn.Module, shape: tuple[int, ...], reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Its channels, and those of the layers tied to them, stay whole, and the warning says why."""
    with caplog.at_level(logging.WARNING):
        assert channel_groups(model.eval(), shape) == []
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "'attn'" in warning and reason in warning
    embed = model.attn.embed_dim
    assert prune_channels(model, shape, {"query": 0.5, "memory": 0.5, "embed": 0.5, "attn": 0.5}) == []
    assert model.attn.embed_dim == embed
