"""The built-in layer kinds in small models that use them.

Discovery lists each layer with its kind, channels, weights and MACs (hand counts, cross-checked with PyTorch's
FLOP counter where it sees the kernel); sequence layouts, stand-alone copies and the channel pruning around the
kinds behave. The multi-weight kinds (recurrent, attention) are not put through ``compress`` here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.policy import LayerChoice, Policy
from envs.latency_model import layer_calls
from methods.discovery import discover_layers
from methods.layer_kinds import kind_of, weight_keys
from methods.layer_kinds.attention import AttentionKind
from methods.layer_kinds.conv_transpose import ConvTransposeKind
from methods.layer_kinds.embedding import EmbeddingBagKind, EmbeddingKind
from methods.layer_kinds.recurrent import GRUKind, LSTMKind, RNNKind
from methods.lowrank import factorisable
from methods.pipeline import compress, decode
from methods.structured import channel_groups, prune_channels, replay_pruning


def _flop_macs(call: object) -> int:
    """Multiply-accumulates PyTorch's FLOP counter sees in ``call()``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call()
    return counter.get_total_flops() // 2


class Volume(nn.Module):
    """A strided Conv3d, then a depthwise Conv1d over the flattened volume."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, stride=(1, 2, 2), padding=1)
        self.depthwise = nn.Conv1d(4, 4, 3, padding=1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.conv(x).flatten(2))


def test_conv3d_and_conv1d_layers() -> None:
    conv, depthwise = discover_layers(Volume(), (1, 4, 8, 8))
    assert (conv.kind, conv.kernel, conv.stride, conv.input_hw, conv.output_hw) == ("conv", 3, 1, 8, 4)
    assert (conv.params, conv.macs) == (4 * 27, 4 * 27 * 4 * 4 * 4)  # every position of the 4x4x4 output
    assert (depthwise.kind, depthwise.groups, depthwise.input_hw, depthwise.macs) == ("depthwise", 4, 64, 4 * 3 * 64)
    assert factorisable(nn.Conv3d(2, 4, 3)) and factorisable(nn.Conv1d(2, 4, 3))
    assert not factorisable(nn.Conv1d(4, 4, 3, groups=4))


class Decoder(nn.Module):
    """Two strided convs down, two transposed convs back up to the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dec2 = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.enc2(torch.relu(self.enc1(x))))
        return self.dec2(torch.relu(self.bn(self.dec1(x))))


DECODED = (3, 16, 16)


def test_transposed_conv_decoder_layers() -> None:
    specs = {s.name: s for s in discover_layers(Decoder(), DECODED)}
    dec1, dec2 = specs["dec1"], specs["dec2"]
    assert (dec1.kind, dec1.in_channels, dec1.out_channels, dec1.input_hw, dec1.output_hw) == ("conv", 16, 8, 4, 8)
    assert (dec1.params, dec1.macs) == (16 * 8 * 16, 16 * 8 * 16 * 4 * 4)  # every weight at each input position
    assert (dec2.out_channels, dec2.output_hw, dec2.macs) == (3, 16, 8 * 3 * 9 * 8 * 8)
    assert dec2.tensors == ((8 * 3 * 9, 8),)  # (in, out, k, k): the rows are the input channels
    grouped = nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2)
    (spec,) = discover_layers(nn.Sequential(grouped), (4, 5))
    assert (spec.groups, spec.macs) == (2, 4 * 3 * 3 * 5)
    assert spec.macs == _flop_macs(lambda: grouped(torch.zeros(1, 4, 5)))
    volume = nn.ConvTranspose3d(2, 3, 2, stride=2)
    assert isinstance(kind_of(volume), ConvTransposeKind) and not factorisable(volume)
    x = torch.randn(2, 2, 3, 3, 3)
    with torch.no_grad():
        assert torch.equal(ConvTransposeKind().standalone(volume)(x), volume(x))


def test_transposed_conv_output_channels_are_pruned_and_replayed() -> None:
    torch.manual_seed(0)
    model = Decoder().eval()
    groups = channel_groups(model, DECODED)
    assert [g.leader for g in groups] == ["enc1", "enc2", "dec1"]  # dec2 writes the output
    pruned = copy.deepcopy(model)
    history = prune_channels(pruned, DECODED, {g.leader: 0.5 for g in groups})  # checks the outputs itself
    assert (pruned.dec1.out_channels, pruned.bn.num_features, pruned.dec2.in_channels) == (4, 4, 4)
    rebuilt = Decoder().eval()
    replay_pruning(rebuilt, DECODED, history)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, *DECODED)
    with torch.no_grad():
        assert pruned(x).shape == (2, *DECODED)
        assert torch.equal(rebuilt(x), pruned(x))


def test_a_transposed_conv_decoder_is_compressed() -> None:
    torch.manual_seed(0)
    model = Decoder().eval()
    policy = Policy.from_choices({
        "enc1": LayerChoice(sparsity=0.25, bits=8),
        "enc2": LayerChoice(sparsity=0.25, bits=8),
        "dec1": LayerChoice(sparsity=0.5, bits=4, keep=0.5),
        "dec2": LayerChoice(sparsity=0.5, bits=8),
    })
    compressed = compress(model, policy, input_shape=DECODED, source={"model": "test"})
    assert compressed.model.dec1.out_channels == 4
    assert float((compressed.model.dec1.weight == 0).float().mean()) >= 0.5
    x = torch.randn(2, *DECODED)
    rebuilt = decode(compressed.blob, Decoder(), replay=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.model(x))


class Tokens(nn.Module):
    """Token ids (given as floats) looked up, averaged and classified."""

    def __init__(self, bag: bool = False) -> None:
        super().__init__()
        self.table = nn.EmbeddingBag(20, 6, mode="mean") if bag else nn.Embedding(20, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        looked_up = self.table(x.long())
        return self.fc(looked_up if looked_up.dim() == 2 else looked_up.mean(dim=1))


@pytest.mark.parametrize(("bag", "kind"), [(False, EmbeddingKind), (True, EmbeddingBagKind)])
def test_embedding_tables(bag: bool, kind: type) -> None:
    model = Tokens(bag)
    table, fc = discover_layers(model, (7,))
    assert (table.name, table.kind, table.in_channels, table.out_channels) == ("table", "embedding", 20, 6)
    assert (table.params, table.macs, table.tensors) == (120, 0, ((120, 20),))  # one row per token
    assert fc.macs == 18
    assert type(kind_of(model.table)) is kind and not kind_of(model.table).channel_pruning
    (call, _) = layer_calls(model, (7,))
    assert call.input_shape == (7,) and call.activations == (6 if bag else 42)
    ids = kind_of(model.table).timing_input(model.table, (7,), 4, torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int64 and ids.shape == (4, 7) and 0 <= int(ids.min()) and int(ids.max()) < 20


def test_an_embedding_model_is_compressed_per_row() -> None:
    torch.manual_seed(0)
    model = Tokens().eval()
    policy = Policy.from_choices({"table": LayerChoice(sparsity=0.5, bits=2), "fc": LayerChoice(bits=8)})
    compressed = compress(model, policy, input_shape=(7,), source={"model": "test"})
    table = compressed.model.table.weight
    assert float((table == 0).float().mean()) >= 0.5
    assert all(len(row.unique()) <= 2**2 for row in table)  # 2-bit codes per vocabulary row
    x = torch.randint(0, 20, (5, 7)).float()
    rebuilt = decode(compressed.blob, Tokens())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.model(x))


class RowLSTM(nn.Module):
    """An LSTM over the rows of a (1, 8, 8) image, classifying from its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.squeeze(1))
        return self.fc(out[:, -1])


class ConvRecurrent(nn.Module):
    """A Conv1d over 10 steps, then a sequence-first GRU (or LSTM) and a classifier on its last step."""

    def __init__(self, recurrent: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 3, padding=1)
        self.rnn = recurrent(8, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(torch.relu(self.conv(x)).permute(2, 0, 1))
        return self.fc(out[-1])


def test_an_lstm_classifier_over_image_rows() -> None:
    model = RowLSTM()
    rnn, fc = discover_layers(model, (1, 8, 8))
    assert (rnn.name, rnn.kind, rnn.in_channels, rnn.out_channels, rnn.input_hw) == ("rnn", "recurrent", 8, 12, 8)
    assert rnn.params == 4 * 12 * (8 + 12) and rnn.tensors == ((4 * 12 * 8, 48), (4 * 12 * 12, 48))
    assert rnn.macs == 8 * 4 * 12 * (8 + 12)  # 8 steps, each through every gate matrix
    assert fc.macs == 120
    assert weight_keys(model, "rnn") == ("rnn.weight_ih_l0", "rnn.weight_hh_l0")
    assert isinstance(kind_of(model.rnn), LSTMKind)
    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN's fused LSTM is invisible to the FLOP counter
        assert rnn.macs == _flop_macs(lambda: model.rnn(torch.zeros(1, 8, 8)))


def test_a_gru_after_a_conv1d() -> None:
    model = ConvRecurrent()
    conv, rnn, fc = discover_layers(model, (2, 10))
    assert (conv.kind, conv.macs) == ("conv", 2 * 8 * 3 * 10)
    assert (rnn.kind, rnn.in_channels, rnn.out_channels, rnn.input_hw) == ("recurrent", 8, 6, 10)
    assert rnn.macs == 10 * 3 * 6 * (8 + 6) == _flop_macs(lambda: model.rnn(torch.zeros(10, 1, 8)))
    assert isinstance(kind_of(model.rnn), GRUKind) and fc.macs == 24
    assert [call.key for call in layer_calls(model, (2, 10))][1] == "gru:8:6:1:1:1:0:10:fp32"


def test_the_channels_a_conv_feeds_an_lstm_are_pruned_from_its_input_matrix_only() -> None:
    torch.manual_seed(0)
    model = ConvRecurrent(nn.LSTM).eval()
    conv, rnn = channel_groups(model, (2, 10))
    assert conv.members == ("conv",) and rnn.members == ("rnn",)  # the LSTM's hidden units are a group of their own
    prune_channels(model, (2, 10), {"conv": 0.5})
    assert model.rnn.weight_ih_l0.shape == (24, 4) and model.rnn.weight_hh_l0.shape == (24, 6)
    assert model.rnn.input_size == 4


def test_recurrent_layouts_weights_and_copies() -> None:
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3)
    kind = kind_of(lstm)
    assert [w.name for w in kind.weights(lstm)] == [
        f"weight_{part}_l{layer}{direction}"
        for layer in (0, 1) for direction in ("", "_reverse") for part in ("ih", "hh", "hr")
    ]
    assert [w.name for w in kind.weights(lstm) if w.in_dim is not None] == ["weight_ih_l0", "weight_ih_l0_reverse"]
    assert kind.channels(lstm).out_channels == 6  # both directions, projected
    assert kind.sample_shape(lstm, torch.zeros(7, 2, 6)) == (7, 6)  # sequence first
    assert kind.sample_shape(lstm, torch.zeros(7, 6)) == (7, 6)  # one unbatched sample
    x = torch.randn(3, 7, 6)
    copied = kind.standalone(lstm.eval())
    assert copied.batch_first and copied.proj_size == 3
    rnn = nn.RNN(6, 5, nonlinearity="relu", bias=False).eval()
    plain = RNNKind().standalone(rnn)
    assert plain.batch_first and plain.nonlinearity == "relu" and plain.bias is False
    with torch.no_grad():
        for layer, timed in ((lstm, copied), (rnn, plain)):  # the same outputs, batch first
            assert torch.equal(timed(x)[0], layer(x.transpose(0, 1))[0].transpose(0, 1))


class Block(nn.Module):
    """A tiny transformer block: token embedding, residual self-attention, LayerNorm, residual MLP, mean, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        h = h + torch.relu(self.mlp(h))
        return self.fc(h.mean(dim=1))


def test_a_transformer_block() -> None:
    model = Block()
    specs = discover_layers(model, (5, 4))
    assert [s.name for s in specs] == ["embed", "attn", "mlp", "fc"]  # attn.out_proj is part of attn
    attn = specs[1]
    assert (attn.kind, attn.in_channels, attn.out_channels, attn.input_hw) == ("attention", 8, 8, 5)
    assert (attn.params, attn.tensors) == (4 * 64, ((3 * 64, 24), (64, 8)))
    assert attn.macs == 5 * 4 * 64 + 2 * 5 * 5 * 8  # projections, then scores and weighted values
    assert isinstance(kind_of(model.attn), AttentionKind)
    assert weight_keys(model, "attn") == ("attn.in_proj_weight", "attn.out_proj.weight")
    assert layer_calls(model, (5, 4))[1].key == "attention:8:2:8:8:1:0:0:5:fp32"


class SelfAttending(nn.Module):
    """Self-attention of a sequence-first attention layer on batch-first inputs."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)  # sequence first, as the attention's default layout
        return self.attention(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("options", [{}, {"add_bias_kv": True, "add_zero_attn": True}, {"bias": False}])
def test_attention_macs_match_the_flop_counter_with_explicit_weights(options: dict[str, bool]) -> None:
    """The fused kernels hide the attention products from the counter; with ``need_weights`` it sees them all."""
    attention = nn.MultiheadAttention(8, 2, **options)
    (spec,) = discover_layers(nn.Sequential(SelfAttending(attention)), (6, 8))
    x = torch.zeros(6, 1, 8)
    assert spec.input_hw == 6 and spec.macs == _flop_macs(lambda: attention(x, x, x, need_weights=True))


def test_attention_layouts_weights_and_copies() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, kdim=8, vdim=8).eval()  # sequence first
    kind = kind_of(attention)
    assert kind.sample_shape(attention, torch.zeros(5, 3, 8)) == (5, 8)
    assert kind.sample_shape(attention, torch.zeros(5, 8)) == (5, 8)
    separate = nn.MultiheadAttention(8, 2, kdim=6, vdim=4)
    assert [(w.name, w.in_dim) for w in kind.weights(separate)] == [
        ("q_proj_weight", 1), ("k_proj_weight", 1), ("v_proj_weight", 1), ("out_proj.weight", None)]
    copied = kind.standalone(attention)
    assert kind.timing_config(copied, (5, 8)) == kind.timing_config(attention, (5, 8))
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        expected = kind.output_tensor(kind.run(attention, x.transpose(0, 1))).transpose(0, 1)
        assert torch.allclose(copied(x), expected, atol=1e-6)


class _Sequence(nn.Module):
    """An LSTM, a GRU and a self-attention layer over a (N, 6, 8) sequence, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.gru = nn.GRU(12, 12, batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gru(self.lstm(x)[0])[0]
        return self.fc(self.attn(h, h, h, need_weights=False)[0].mean(dim=1))


@pytest.mark.parametrize("quantizer", ["linear", "kmeans"])
def test_every_weight_of_recurrent_and_attention_layers_is_pruned_coded_fine_tuned_and_decoded(
    quantizer: str,
) -> None:
    from torch.utils.data import TensorDataset

    from methods.finetune import FinetuneSettings
    from methods.pipeline import Refinement

    torch.manual_seed(0)
    model = _Sequence().eval()
    data = TensorDataset(torch.randn(48, 6, 8), torch.randint(0, 3, (48,)))
    layers = [spec.name for spec in discover_layers(model, (6, 8))]
    assert layers == ["lstm", "gru", "attn", "fc"]
    choice = LayerChoice(sparsity=0.75, bits=3, quantizer=quantizer)
    policy = Policy.from_choices({name: choice for name in layers})
    refinement = Refinement(finetune=FinetuneSettings(steps=4, batch_size=16, lr=1e-2), train=data)
    compressed = compress(model, policy, input_shape=(6, 8), source={"model": "test"}, refinement=refinement)
    parameters = dict(compressed.model.named_parameters())
    keys = [key for name in layers for key in weight_keys(compressed.model, name)]
    assert "attn.out_proj.weight" in keys and "gru.weight_hh_l0_reverse" in keys and len(keys) == 11
    for key in keys:
        weight = parameters[key].detach()
        assert abs(float((weight == 0).float().mean()) - 0.75) < 0.01, key
        assert not torch.equal(weight, dict(model.named_parameters())[key].detach()), key
        rows = weight.reshape(weight.shape[0], -1)
        distinct = max(torch.unique(row[row != 0]).numel() for row in rows)
        assert distinct <= 2**3, key
    assert compressed.size_bytes < sum(4 * p.numel() for p in model.parameters()) / 4
    rebuilt = decode(compressed.blob, _Sequence())
    x = torch.randn(5, 6, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.model(x))


class CellGRU(nn.Module):
    """A Conv1d over the rows, then a ``GRUCell`` unrolled in Python over time (its gates are separate ops to the
    dependency graph, which cannot group them), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(28, 32, 3, padding=1)
        self.cell = nn.GRUCell(32, 40)
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.relu(self.conv(x.squeeze(1))).transpose(1, 2)
        hidden = torch.zeros(steps.shape[0], 40)
        for t in range(steps.shape[1]):
            hidden = self.cell(steps[:, t], hidden)
        return self.fc(hidden)


def test_a_model_torch_pruning_cannot_group_keeps_its_channels_and_is_still_compressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Conv1d + unrolled GRU cell model: Torch-Pruning cannot group its channels, so every channel is kept (one
    warning) and its Conv1d and Linear weights are pruned and coded all the same."""
    import logging

    torch.manual_seed(0)
    model = CellGRU().eval()
    with caplog.at_level(logging.WARNING):
        assert channel_groups(model, (1, 28, 28)) == []
    assert sum("every channel is kept" in r.getMessage() for r in caplog.records) == 1
    layers = [spec.name for spec in discover_layers(model, (1, 28, 28))]
    assert layers == ["conv", "fc"]
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.6, bits=4) for name in layers})
    compressed = compress(model, policy, input_shape=(1, 28, 28), source={"model": "test"})
    for key in ("conv.weight", "fc.weight"):
        assert abs(float((compressed.model.get_parameter(key) == 0).float().mean()) - 0.6) < 0.01, key
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(decode(compressed.blob, CellGRU())(x), compressed.model(x))


def test_a_conv1d_and_gru_model_prunes_its_channels_and_hidden_units_and_is_compressed() -> None:
    """The Conv1d + GRU fixture (classifying from the GRU's final state): the conv's channels and the GRU's hidden
    units are pruned, its Conv1d, GRU and Linear weights are pruned and coded, and the file replays exactly."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "fixtures" / "sequence_models.py"
    spec = importlib.util.spec_from_file_location("sequence_models_for_kinds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.conv_gru().eval()
    assert [(g.leader, g.members, g.channels) for g in channel_groups(model, (1, 28, 28))] == [
        ("conv", ("conv",), 32), ("gru", ("gru",), 40)]
    layers = [spec.name for spec in discover_layers(model, (1, 28, 28))]
    assert layers == ["conv", "gru", "fc"]
    policy = Policy.from_choices({
        "conv": LayerChoice(sparsity=0.6, bits=4, keep=0.5), "gru": LayerChoice(sparsity=0.6, bits=4, keep=0.5),
        "fc": LayerChoice(sparsity=0.6, bits=4)})
    compressed = compress(model, policy, input_shape=(1, 28, 28), source={"model": "test"})
    pruned = compressed.model
    assert (pruned.conv.out_channels, pruned.gru.input_size, pruned.gru.hidden_size, pruned.fc.in_features) == (
        16, 16, 20, 20)
    for key in ("conv.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "fc.weight"):
        assert abs(float((pruned.get_parameter(key) == 0).float().mean()) - 0.6) < 0.01, key
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(decode(compressed.blob, module.conv_gru(), replay=True)(x), pruned(x))
