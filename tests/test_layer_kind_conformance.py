"""Conformance suite: every registered layer kind (methods.layer_kinds.LAYER_KINDS), and a kind added from outside.

Each kind's own ``example()`` layer, called through the kind (``run``) in a tiny host model, is discovered with the
MACs that PyTorch's FLOP counter measures (or a hand count where the counter misses the kernel), its compressible
weights have the channel dims it states, its stand-alone copy computes what it does on the kind's timing inputs,
and its low-rank factors at full rank reproduce it; a kind that removes its own channels prunes its example exactly
(between two linear layers) and replays. A kind for a module type of this file, registered here
(nothing else changed), passes the same checks and goes through ``methods.pipeline.compress``; so does a model of
the built-in Conv1d kind.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import methods.layer_kinds as layer_kinds
from core.policy import LayerChoice, Policy
from core.registry import Registry
from core.spec import LAYER_SPEC_KINDS, LayerSpec
from envs.latency_model import _key, layer_calls
from methods.discovery import discover_layers
from methods.layer_kinds import LAYER_KINDS, Channels, LayerKind, kind_of, weight_of
from methods.lowrank import factorise, full_rank
from methods.pipeline import compress, decode
from methods.structured import channel_groups, prune_channels, replay_pruning


class Affine(nn.Module):
    """A module type no built-in kind knows: ``y = x W^T + b`` through ``F.linear``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class AffineKind(LayerKind):
    """The whole of a new kind, written outside the package: weight ``(out, in)``, MACs per position."""

    module_type = Affine
    channel_pruning = False

    def channels(self, module: nn.Module) -> Channels:
        return Channels(*reversed(module.weight.shape))

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        out_features, in_features = module.weight.shape
        return LayerSpec(
            name=name, kind="linear", in_channels=in_features, out_channels=out_features, kernel=1, stride=1,
            groups=1, input_hw=1, output_hw=1, params=module.weight.numel(),
            macs=module.weight.numel() * (output[0].numel() // out_features),
        )

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        return Affine(6, 5), (3, 6)

    def standalone(self, module: nn.Module) -> nn.Module:
        layer = Affine(module.weight.shape[1], module.weight.shape[0])
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        return ("affine", *module.weight.shape, *sample_shape[:-1])


KINDS = [*LAYER_KINDS.items(), ("affine (registered by this test)", AffineKind())]

HAND_MACS = {
    "lstm": 7 * 2 * 2 * (20 * 6 + 20 * 3 + 3 * 5),
    "attention": 5 * 4 * 8 * 8 + 2 * 5 * 5 * 8,
}
"""MACs of the examples whose kernels PyTorch's FLOP counter misses on a CPU. LSTM (oneDNN runs it as one opaque
op): 7 steps x 2 layers x 2 directions x (4 gates x 5 hidden x (6 inputs + 3 projected states) + the 3 x 5
projection); the second layer reads the 2 x 3 projected features of the first. Attention (the fused kernels):
5 positions x 4 projections of 8 x 8, plus 5 x 5 x 8 for the scores and as many for the weighted values."""


@pytest.fixture(autouse=True)
def with_affine(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LAYER_KINDS`` plus the Affine kind, for each test of this file only."""
    registry: Registry[LayerKind] = Registry("layer kind")
    for name, kind in LAYER_KINDS.items():
        registry.register(name, kind)
    registry.register("affine", AffineKind())
    monkeypatch.setattr(layer_kinds, "LAYER_KINDS", registry)


class Host(nn.Module):
    """A model of one layer, called as its kind calls it, on inputs of the kind's timing dtype (indices for a
    lookup table: the float inputs of discovery are cast)."""

    def __init__(self, kind: LayerKind, layer: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind = kind
        self.layer = layer
        self.dtype = kind.timing_input(layer, shape, 1, torch.Generator()).dtype

    def forward(self, x: torch.Tensor) -> Any:
        return self.kind.run(self.layer, x.to(self.dtype))


def _input(kind: LayerKind, layer: nn.Module, shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    return kind.timing_input(layer, shape, batch, torch.Generator().manual_seed(0))


def _macs(kind: LayerKind, layer: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one call, as PyTorch's FLOP counter counts them (2 FLOPs each)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        kind.run(layer, x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_discovery_finds_the_kind_with_measured_macs(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    assert type(kind_of(layer)) is type(kind), "another registered kind claims this kind's example"
    (spec,) = discover_layers(Host(kind, layer, shape), shape)
    channels = kind.channels(layer)
    assert spec.name == "layer" and spec.kind in LAYER_SPEC_KINDS
    assert (spec.in_channels, spec.out_channels, spec.groups) == (
        channels.in_channels, channels.out_channels, channels.groups)
    tensors = [weight_of(layer, w.name) for w in kind.weights(layer)]
    assert spec.params == sum(t.numel() for t in tensors)
    assert spec.tensors == tuple((t.numel(), t.shape[0]) for t in tensors)
    expected = HAND_MACS[name] if name in HAND_MACS else _macs(kind, layer, _input(kind, layer, shape, batch=1))
    assert spec.macs == expected


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_compressible_weights_have_the_stated_channel_dims(name: str, kind: LayerKind) -> None:
    layer, _ = kind.example()
    channels = kind.channels(layer)
    weights = kind.weights(layer)
    assert weights, "a compressible layer has at least one compressible weight"
    assert len({w.name for w in weights}) == len(weights)
    parameters = dict(layer.named_parameters())
    for weight in weights:
        assert isinstance(parameters.get(weight.name), nn.Parameter), f"{weight.name} is not a parameter"
        tensor = parameters[weight.name]
        assert 0 <= weight.out_dim < tensor.dim() and weight.in_dim != weight.out_dim
        if weight.in_dim is not None:
            assert tensor.shape[weight.in_dim] in {channels.in_channels, channels.in_channels // channels.groups}
    assert any(w.in_dim is not None for w in weights) or len(weights) == 1, "a layer reads its input somewhere"
    if len(weights) == 1:  # one tensor: its out_dim indexes the output channels, or a table's entries
        (weight,) = weights
        size = parameters[weight.name].shape[weight.out_dim]
        assert size == (channels.in_channels if weight.in_dim is None else channels.out_channels)


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_the_standalone_copy_computes_what_the_layer_does(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    layer.eval()
    copied = kind.standalone(layer)
    assert copied is not layer and not copied.training
    assert not {id(p) for p in copied.parameters()} & {id(p) for p in layer.parameters()}
    x = _input(kind, layer, shape)
    with torch.no_grad():
        assert torch.equal(kind.output_tensor(copied(x)), kind.output_tensor(kind.run(layer, x)))


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_full_rank_factors_reproduce_a_factorisable_layer(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    if not kind.factorisable(layer):
        with pytest.raises(ValueError):
            kind.factors(layer, 1)
        return
    x = _input(kind, layer, shape)
    with torch.no_grad():
        assert torch.allclose(factorise(layer, full_rank(layer))(x), kind.run(layer, x), atol=1e-5)


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_timing_config_is_a_key_of_the_configuration(name: str, kind: LayerKind) -> None:
    layer, shape = kind.example()
    config = kind.timing_config(layer, shape)
    assert config and all(isinstance(part, (str, int)) for part in config)
    assert kind.timing_config(kind.standalone(layer), shape) == config


@pytest.mark.parametrize(
    ("layer", "shape", "key"),
    [
        (nn.Conv2d(3, 8, (3, 1), stride=2, padding=(1, 0), bias=False), (3, 12, 12),
         "conv:3:8:3:1:2:2:1:0:1:1:1:0:12:12:fp32"),
        (nn.Linear(6, 5), (4, 6), "linear:6:5:1:4:fp32"),
        (nn.Conv1d(2, 8, 5, padding=2), (2, 16), "conv:2:8:5:1:2:1:1:1:16:fp32"),
        (nn.Conv3d(1, 4, 3, stride=(1, 2, 2), padding=1, bias=False), (1, 4, 8, 8),
         "conv:1:4:3:3:3:1:2:2:1:1:1:1:1:1:1:0:4:8:8:fp32"),
        (nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), (16, 4, 4),
         "conv_transpose:16:8:4:4:2:2:1:1:0:0:1:1:1:1:4:4:fp32"),
        (nn.Embedding(100, 16), (12,), "embedding:100:16:12:fp32"),
        (nn.EmbeddingBag(100, 16, mode="sum"), (12,), "embedding_bag:100:16:sum:12:fp32"),
        (nn.LSTM(8, 12, batch_first=True), (8, 8), "lstm:8:12:1:1:1:0:8:fp32"),
        (nn.LSTM(8, 12, bidirectional=True, proj_size=4), (8, 8), "lstm:8:12:1:1:2:4:8:fp32"),
        (nn.GRU(8, 6, num_layers=2), (10, 8), "gru:8:6:2:1:1:0:10:fp32"),
        (nn.RNN(4, 5, nonlinearity="relu", bias=False), (3, 4), "rnn_relu:4:5:1:0:1:0:3:fp32"),
        (nn.MultiheadAttention(8, 2, batch_first=True), (5, 8), "attention:8:2:8:8:1:0:0:5:fp32"),
    ],
)
def test_latency_table_keys_of_the_built_in_kinds_keep_their_format(
    layer: nn.Module, shape: tuple[int, ...], key: str
) -> None:
    """Latency tables written earlier stay valid: the keys the latency model builds from the kinds are unchanged."""
    assert _key(layer, shape, "fp32") == key


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_the_latency_model_times_every_kind(name: str, kind: LayerKind) -> None:
    layer, shape = kind.example()
    calls = layer_calls(Host(kind, layer, shape), shape)
    assert [call.module for call in calls] == [layer]
    assert calls[0].input_shape == shape
    assert calls[0].key.startswith(":".join(str(part) for part in kind.timing_config(layer, shape)[:2]))
    timed = kind.standalone(layer)
    with torch.no_grad():
        out = kind.output_tensor(timed(_input(kind, layer, calls[0].input_shape, batch=3)))
    assert out.shape[0] == 3 and out[0].numel() == calls[0].activations


class Sandwich(nn.Module):
    """A sequence layer between two linear layers: ``pre`` feeds its input channels, ``post`` reads its output
    channels averaged over the sequence."""

    def __init__(self, kind: LayerKind, layer: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind = kind
        self.pre = nn.Linear(shape[-1], shape[-1])
        self.layer = layer
        self.post = nn.Linear(kind.channels(layer).out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.kind.output_tensor(self.kind.run(self.layer, self.pre(x)))
        return self.post(out.mean(dim=tuple(range(1, out.dim() - 1))))


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_a_kind_that_removes_its_own_channels_prunes_its_example_exactly(name: str, kind: LayerKind) -> None:
    """Its units partition its output channels; pruning its group at 0.5 passes the output check (the pruned model
    computes what the unpruned one does under the kind's own mask), shrinks the layer to whole units, replays bit for
    bit, and the pruned layer's stand-alone (timing) copy computes what it does."""
    torch.manual_seed(0)
    layer, shape = kind.example()
    if not kind.own_pruning:
        return
    channels = kind.channels(layer).out_channels
    units = kind.channel_units(layer)
    assert sorted(i for unit in units for i in unit) == list(range(channels))
    host = Sandwich(kind, layer, shape).eval()
    (group,) = [g for g in channel_groups(host, shape) if "layer" in g.members]
    assert group.channels == channels and group.unit == len(units[0])
    pruned = copy.deepcopy(host)
    history = prune_channels(pruned, shape, {group.leader: 0.5})
    kept = kind.channels(pruned.layer)
    assert kept.out_channels == group.kept(0.5) < channels and kept.out_channels % group.unit == 0
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    rebuilt = copy.deepcopy(host)
    replay_pruning(rebuilt, shape, history)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
        inputs = pruned.pre(x)
        expected = kind.output_tensor(kind.run(pruned.layer, inputs))
        assert torch.allclose(kind.output_tensor(kind.standalone(pruned.layer)(inputs)), expected, atol=1e-6)


def test_hand_counted_macs_of_the_built_in_kinds() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    conv, depthwise, linear = discover_layers(model, (3, 9, 9))
    assert (conv.kind, conv.output_hw, conv.macs) == ("conv", 5, 3 * 8 * 9 * 5 * 5)
    assert (depthwise.kind, depthwise.macs) == ("depthwise", 8 * 9 * 5 * 5)
    assert (linear.kind, linear.macs) == ("linear", 200 * 4)
    tokens = discover_layers(nn.Sequential(nn.Linear(6, 5)), (7, 6))[0]
    assert tokens.macs == 6 * 5 * 7  # a linear layer applied at 7 positions


class Signal(nn.Module):
    """A 1-d convolutional classifier: Conv1d-BN-ReLU, a residual Conv1d, mean over time, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.mid = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.mid(x))
        return self.fc(x.mean(dim=2))


SIGNAL = (2, 16)


def test_a_conv1d_model_is_discovered_and_compressed() -> None:
    torch.manual_seed(0)
    model = Signal().eval()
    stem, mid, fc = discover_layers(model, SIGNAL)
    assert [s.name for s in (stem, mid, fc)] == ["stem", "mid", "fc"]
    assert (stem.kind, stem.kernel, stem.input_hw, stem.output_hw, stem.macs) == ("conv", 5, 16, 16, 2 * 8 * 5 * 16)
    assert mid.macs == 8 * 8 * 3 * 16 and fc.macs == 32
    assert [g.leader for g in channel_groups(model, SIGNAL)] == ["stem"]  # stem + mid: one residual group
    policy = Policy.from_choices({
        "stem": LayerChoice(sparsity=0.5, bits=4, keep=0.5),
        "mid": LayerChoice(sparsity=0.25, bits=8, rank=0.5),
        "fc": LayerChoice(sparsity=0.5, bits=32),
    })
    compressed = compress(model, policy, input_shape=SIGNAL, source={"model": "test"})
    pruned = compressed.model
    assert pruned.stem.out_channels == 4 and isinstance(pruned.mid, nn.Sequential)
    assert compressed.meta["factorised"] == {"mid": 2}  # half the full rank of the pruned 4-to-4 conv
    assert float((pruned.stem.weight == 0).float().mean()) >= 0.5
    x = torch.randn(3, *SIGNAL, generator=torch.Generator().manual_seed(0))
    rebuilt = decode(compressed.blob, Signal(), replay=True)
    with torch.no_grad():
        assert pruned(x).shape == (3, 4)
        assert torch.equal(rebuilt(x), pruned(x))
    assert model.stem.out_channels == 8  # the base model is left alone


class Mixer(nn.Module):
    """Two Affine layers of the kind registered by this file around a ReLU, over 3 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.first = Affine(6, 8)
        self.second = Affine(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x))).mean(dim=1)


def test_a_kind_registered_from_outside_is_discovered_and_compressed() -> None:
    torch.manual_seed(0)
    model = Mixer().eval()
    first, second = discover_layers(model, (3, 6))
    assert [(s.name, s.kind, s.macs) for s in (first, second)] == [("first", "linear", 144), ("second", "linear", 96)]
    policy = Policy.from_choices({
        "first": LayerChoice(sparsity=0.5, bits=4),
        "second": LayerChoice(sparsity=0.25, bits=8),
    })
    compressed = compress(model, policy, input_shape=(3, 6), source={"model": "test"})
    assert float((compressed.model.first.weight == 0).float().mean()) >= 0.5
    assert all(len(row.unique()) <= 2**4 for row in compressed.model.first.weight)  # 4-bit codes per row
    x = torch.randn(5, 3, 6)
    rebuilt = decode(compressed.blob, Mixer())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.model(x))
