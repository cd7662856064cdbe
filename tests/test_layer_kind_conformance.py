"""Conformance suite: every registered layer kind (methods.layer_kinds.LAYER_KINDS), and a kind added from outside.

Each kind's own ``example()`` layer is discovered in a tiny model with the MACs that PyTorch's FLOP
counter measures, its compressible weights have the channel dims it states, its stand-alone copy
computes what it does, and its low-rank factors at full rank reproduce it. A Conv1d kind registered
here (nothing else changed) passes the same checks and goes through ``methods.pipeline.compress``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import methods.layer_kinds as layer_kinds
from core.policy import LayerChoice, Policy
from core.registry import Registry
from envs.latency_model import _key, layer_calls
from methods.discovery import discover_layers
from methods.layer_kinds import LAYER_KINDS, LayerKind, kind_of
from methods.layer_kinds.conv2d import Conv2dKind
from methods.lowrank import factorise, full_rank
from methods.pipeline import compress, decode
from methods.structured import channel_groups


class Conv1dKind(Conv2dKind):
    """The whole of a new kind for ``nn.Conv1d``: the conv code reads only the module's attributes."""

    module_type = nn.Conv1d


KINDS = [*LAYER_KINDS.items(), ("conv1d (registered by this test)", Conv1dKind())]


@pytest.fixture(autouse=True)
def with_conv1d(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LAYER_KINDS`` plus the Conv1d kind, for each test of this file only."""
    registry: Registry[LayerKind] = Registry("layer kind")
    for name, kind in LAYER_KINDS.items():
        registry.register(name, kind)
    registry.register("conv1d", Conv1dKind())
    monkeypatch.setattr(layer_kinds, "LAYER_KINDS", registry)


def _input(shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one call, as PyTorch's FLOP counter counts them (2 FLOPs each)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_discovery_finds_the_kind_with_measured_macs(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    assert type(kind_of(layer)) is type(kind), "another registered kind claims this kind's example"
    (spec,) = discover_layers(nn.Sequential(layer), shape)
    channels = kind.channels(layer)
    assert spec.name == "0" and spec.kind in {"conv", "depthwise", "linear"}
    assert (spec.in_channels, spec.out_channels, spec.groups) == (
        channels.in_channels, channels.out_channels, channels.groups)
    assert spec.params == sum(getattr(layer, w.name).numel() for w in kind.weights(layer))
    assert spec.macs == _macs(layer, _input(shape, batch=1))


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_compressible_weights_have_the_stated_channel_dims(name: str, kind: LayerKind) -> None:
    layer, _ = kind.example()
    channels = kind.channels(layer)
    weights = kind.weights(layer)
    assert weights, "a compressible layer has at least one compressible weight"
    parameters = dict(layer.named_parameters())
    for weight in weights:
        assert isinstance(parameters.get(weight.name), nn.Parameter), f"{weight.name} is not a parameter"
        tensor = parameters[weight.name]
        assert tensor.shape[weight.out_dim] == channels.out_channels
        if weight.in_dim is not None:
            assert tensor.shape[weight.in_dim] in {channels.in_channels, channels.in_channels // channels.groups}


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_the_standalone_copy_computes_what_the_layer_does(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    layer.eval()
    copied = kind.standalone(layer)
    assert copied is not layer and not copied.training
    assert not {id(p) for p in copied.parameters()} & {id(p) for p in layer.parameters()}
    x = _input(shape)
    with torch.no_grad():
        assert torch.equal(kind.output_tensor(copied(x)), kind.output_tensor(layer(x)))


@pytest.mark.parametrize(("name", "kind"), KINDS, ids=[name for name, _ in KINDS])
def test_full_rank_factors_reproduce_a_factorisable_layer(name: str, kind: LayerKind) -> None:
    torch.manual_seed(0)
    layer, shape = kind.example()
    if not kind.factorisable(layer):
        with pytest.raises(ValueError):
            kind.factors(layer, 1)
        return
    x = _input(shape)
    with torch.no_grad():
        assert torch.allclose(factorise(layer, full_rank(layer))(x), layer(x), atol=1e-5)


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
    calls = layer_calls(nn.Sequential(layer), shape)
    assert [call.module for call in calls] == [layer]
    assert calls[0].key.startswith(":".join(str(part) for part in kind.timing_config(layer, shape)[:2]))


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


def test_a_kind_registered_from_outside_is_discovered_and_compressed() -> None:
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
    x = _input(SIGNAL, batch=3)
    rebuilt = decode(compressed.blob, Signal(), replay=True)
    with torch.no_grad():
        assert pruned(x).shape == (3, 4)
        assert torch.equal(rebuilt(x), pruned(x))
    assert model.stem.out_channels == 8  # the base model is left alone
