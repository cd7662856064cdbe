"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: a ``recurrent`` layer, one kind class per module type.

The compressible weights are every input, recurrent and projection matrix (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``weight_hr_l{k}``, each also ``_reverse``): dim 0 holds the gate rows, dim 1 the features they read, the layer's
input channels for ``weight_ih_l0`` only (the others read the hidden state or the layer below).
``LayerSpec.in_channels`` is ``input_size``, ``out_channels`` the features the layer writes per step
(``num_directions x (proj_size or hidden_size)``); ``input_hw`` and ``output_hw`` are the sequence length. Each step
multiplies every matrix once, so MACs are the sequence length times the weight elements (the gates' element-wise
products are not counted). Torch-Pruning's RNN support is partial: the output features are never pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind


def sequence_sample_shape(inputs: torch.Tensor, batch_first: bool) -> tuple[int, ...]:
    """``(sequence, features)`` of one sample of a sequence layer's input: a 2-d input is one unbatched sample, a 3-d
    one is ``(batch, sequence, features)`` when ``batch_first``, else ``(sequence, batch, features)``."""
    if inputs.dim() == 2:
        return tuple(int(d) for d in inputs.shape)
    sequence = inputs.shape[1] if batch_first else inputs.shape[0]
    return int(sequence), int(inputs.shape[-1])


class RecurrentKind(LayerKind):
    """Recurrent layers of ``module_type`` (see the module's docstring); not factorisable."""

    module_type = nn.RNNBase
    channel_pruning = False

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """Every weight matrix, layer by layer and direction by direction, in the module's own order; only the first
        layer's input matrices read the layer's input channels (dim 1)."""
        return tuple(
            CompressibleWeight(name, out_dim=0, in_dim=1 if name.startswith("weight_ih_l0") else None)
            for name in module._flat_weights_names  # noqa: SLF001 - the module's own list of its parameters
            if name.startswith("weight_")
        )

    def channels(self, module: nn.Module) -> Channels:
        """Input features in, output features (both directions, projected when ``proj_size``) out."""
        directions = 2 if module.bidirectional else 1
        return Channels(int(module.input_size), directions * int(module.proj_size or module.hidden_size))

    def sample_shape(self, module: nn.Module, inputs: torch.Tensor) -> tuple[int, ...]:
        """``(sequence, features)``, whatever ``batch_first`` is."""
        return sequence_sample_shape(inputs, module.batch_first)

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Features, sequence length and MACs; kernel, stride and groups are 1."""
        params = sum(int(getattr(module, w.name).numel()) for w in self.weights(module))
        sequence = self.sample_shape(module, inputs)[0]
        channels = self.channels(module)
        return LayerSpec(
            name=name, kind="recurrent", in_channels=channels.in_channels, out_channels=channels.out_channels,
            kernel=1, stride=1, groups=1, input_hw=sequence, output_hw=sequence, params=params,
            macs=sequence * params,
        )

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A two-layer bidirectional layer of 5 hidden features over 7 steps of 6 features."""
        return self.module_type(6, 5, num_layers=2, bidirectional=True, batch_first=True), (7, 6)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain layer of the same configuration and weights, batch first."""
        layer = self.module_type(
            module.input_size, module.hidden_size, module.num_layers, bias=module.bias, batch_first=True,
            dropout=module.dropout, bidirectional=module.bidirectional, **self._options(module),
        )
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def _options(self, module: nn.Module) -> dict[str, object]:
        """Constructor arguments of this module type beyond those every recurrent layer has."""
        return {}

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """The mode (``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``), input and hidden sizes, layers, bias,
        directions, projection size, then the sequence length."""
        return (
            module.mode.lower(), module.input_size, module.hidden_size, module.num_layers, module.bias,
            2 if module.bidirectional else 1, module.proj_size, *sample_shape[:1],
        )


class LSTMKind(RecurrentKind):
    """``nn.LSTM``, with ``weight_hr_l{k}`` when it has a ``proj_size``."""

    module_type = nn.LSTM

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A two-layer bidirectional LSTM of 5 hidden features projected to 3, over 7 steps of 6 features."""
        return nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3, batch_first=True), (7, 6)

    def _options(self, module: nn.Module) -> dict[str, object]:
        """The projection size."""
        return {"proj_size": module.proj_size}


class GRUKind(RecurrentKind):
    """``nn.GRU``."""

    module_type = nn.GRU


class RNNKind(RecurrentKind):
    """``nn.RNN`` (``tanh`` or ``relu``)."""

    module_type = nn.RNN

    def _options(self, module: nn.Module) -> dict[str, object]:
        """The nonlinearity."""
        return {"nonlinearity": "tanh" if module.mode == "RNN_TANH" else "relu"}
