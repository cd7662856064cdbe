"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: a ``recurrent`` layer, one kind class per module type.

The compressible weights are every input, recurrent and projection matrix (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``weight_hr_l{k}``, each also ``_reverse``): dim 0 holds the gate rows, dim 1 the features they read, the layer's
input channels for ``weight_ih_l0`` only (the others read the hidden state or the layer below).
``LayerSpec.in_channels`` is ``input_size``, ``out_channels`` the features the layer writes per step
(``num_directions x (proj_size or hidden_size)``); ``input_hw`` and ``output_hw`` are the sequence length. Each step
multiplies every matrix once, so MACs are the sequence length times the weight elements (the gates' element-wise
products are not counted).

Structured pruning removes output features itself (Torch-Pruning's own LSTM pruner slices the wrong dims of the
gate matrices and handles one unidirectional layer only, and it has none for GRU and RNN): a removed feature is a
hidden unit (or, with ``proj_size``, a projected feature) of every layer and direction, its rows in each gate of
the input and recurrent matrices and biases, its column in the recurrent matrix and in the next layer's input
matrix. Both directions lose the same units (feature ``j`` and ``hidden + j`` go together). This equals the layer
with those units' reads zeroed (:meth:`RecurrentKind.mask_outputs`), which is what the output check compares with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind, keep_entries, zero_entries

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
"""Gate blocks of ``hidden_size`` rows in the input and recurrent matrices, by ``module.mode``."""


def _suffixes(module: nn.Module) -> tuple[str, ...]:
    """Parameter name suffix of each direction."""
    return ("", "_reverse") if module.bidirectional else ("",)


def _width(module: nn.Module) -> int:
    """Output features of one direction: the projection size, else the hidden size."""
    return int(module.proj_size or module.hidden_size)


def _units(module: nn.Module, idxs: Sequence[int]) -> list[int]:
    """The per-direction units behind output features ``idxs`` (every direction must lose the same ones)."""
    width, directions = _width(module), len(_suffixes(module))
    per = [sorted(i - d * width for i in idxs if d * width <= i < (d + 1) * width) for d in range(directions)]
    if any(units != per[0] for units in per) or sum(map(len, per)) != len(set(idxs)):
        raise ValueError(f"{type(module).__name__} features {list(idxs)} are not the same units of each direction")
    return per[0]


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
    own_pruning = True

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

    def channel_units(self, module: nn.Module) -> tuple[tuple[int, ...], ...]:
        """Each feature alone; with two directions, feature ``j`` with ``width + j`` (one size for both)."""
        if not module.bidirectional:
            return super().channel_units(module)
        width = _width(module)
        return tuple((j, width + j) for j in range(width))

    def remove_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Removes the units behind features ``idxs`` from every layer and direction (see the module's docstring)."""
        units = set(_units(module, idxs))
        width, suffixes = _width(module), _suffixes(module)
        keep = [j for j in range(width) if j not in units]
        below = [d * width + j for d in range(len(suffixes)) for j in keep]  # the next layer's input features
        hidden = int(module.hidden_size)
        rows = [g * hidden + j for g in range(GATES[module.mode]) for j in keep]
        for layer in range(module.num_layers):
            for suffix in suffixes:
                if module.proj_size:
                    keep_entries(module, f"weight_hr_l{layer}{suffix}", keep, 0)
                else:
                    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        if hasattr(module, f"{part}_l{layer}{suffix}"):
                            keep_entries(module, f"{part}_l{layer}{suffix}", rows, 0)
                keep_entries(module, f"weight_hh_l{layer}{suffix}", keep, 1)
                if layer > 0:
                    keep_entries(module, f"weight_ih_l{layer}{suffix}", below, 1)
        if module.proj_size:
            module.proj_size = len(keep)
        else:
            module.hidden_size = len(keep)
        module._init_flat_weights()  # noqa: SLF001 - the module's own refresh of its weight list

    def remove_inputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Removes input features ``idxs`` from the first layer's input matrices."""
        keep = [i for i in range(int(module.input_size)) if i not in set(idxs)]
        for suffix in _suffixes(module):
            keep_entries(module, f"weight_ih_l0{suffix}", keep, 1)
        module.input_size = len(keep)
        module._init_flat_weights()  # noqa: SLF001 - the module's own refresh of its weight list

    def mask_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Zeroes the recurrent matrices' columns of the removed units and the next layers' input columns."""
        units = _units(module, idxs)
        width, suffixes = _width(module), _suffixes(module)
        below = [d * width + j for d in range(len(suffixes)) for j in units]
        for layer in range(module.num_layers):
            for suffix in suffixes:
                zero_entries(module, f"weight_hh_l{layer}{suffix}", units, 1)
                if layer > 0:
                    zero_entries(module, f"weight_ih_l{layer}{suffix}", below, 1)

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
