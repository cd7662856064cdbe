"""What a compressible layer kind says about its modules: weights, channels, cost, factors, a timing copy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from core.spec import LayerSpec


@dataclass(frozen=True)
class CompressibleWeight:
    """One weight tensor of a layer that pruning and quantization act on, and the dims that index channels."""

    name: str
    """Parameter name inside the module: ``weight``, ``weight_ih_l0``, ``in_proj_weight``, or a dotted path into a
    submodule the layer calls through its weights (``out_proj.weight`` of an attention layer)."""
    out_dim: int = 0
    """Dim of the tensor that indexes its outputs: the layer's output channels (within one group of a grouped
    transposed conv), the gate rows of a recurrent matrix, the projected features of an attention layer, or the
    rows (vocabulary entries) of an embedding table."""
    in_dim: int | None = 1
    """Dim that indexes the layer's input channels (within one group of a grouped conv), the channels structured
    pruning removes when it prunes the layer's producer; ``None`` when the tensor reads none of them: an embedding
    table, a recurrent layer's hidden-state and projection matrices and its deeper layers' input matrices, an
    attention layer's output projection."""


def keep_entries(module: nn.Module, name: str, keep: Sequence[int], dim: int) -> None:
    """Keeps only the entries ``keep`` of dim ``dim`` of parameter ``name`` (a dotted path into a submodule) and of
    its ``.grad``, in place; a parameter that is ``None`` (no bias) is left so."""
    path, _, attr = name.rpartition(".")
    owner = module.get_submodule(path)
    old = getattr(owner, attr)
    if old is None:
        return
    index = torch.tensor(list(keep), dtype=torch.long, device=old.device)
    new = nn.Parameter(old.data.index_select(dim, index), requires_grad=old.requires_grad)
    if old.grad is not None:
        new.grad = old.grad.index_select(dim, index)
    setattr(owner, attr, new)


def zero_entries(module: nn.Module, name: str, idxs: Sequence[int], dim: int) -> None:
    """Zeroes the entries ``idxs`` of dim ``dim`` of parameter ``name`` (a dotted path) in place, if it exists."""
    weight = module.get_parameter(name) if _has(module, name) else None
    if weight is not None and len(idxs):
        weight.data.index_fill_(dim, torch.tensor(list(idxs), dtype=torch.long, device=weight.device), 0)


def _has(module: nn.Module, name: str) -> bool:
    path, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(path), attr, None) is not None


@dataclass(frozen=True)
class Channels:
    """How a layer's channels relate to its neighbours'."""

    in_channels: int
    """Channels (features) the layer reads."""
    out_channels: int
    """Channels (features) the layer writes."""
    groups: int = 1
    """Convolution groups: input channel ``i`` reaches only the outputs of group ``i // (in / groups)``."""

    @property
    def depthwise(self) -> bool:
        """True for one group per input channel."""
        return self.groups > 1 and self.groups == self.in_channels


class LayerKind(ABC):
    """One kind of compressible layer (Conv2d, Linear, ...); register an instance in ``LAYER_KINDS``.

    Discovery, tracing, structured pruning and low-rank factorisation ask the kind of a module instead
    of testing its type.
    """

    module_type: ClassVar[type[nn.Module]]
    """Modules of this type (subclasses included) are of this kind, unless :meth:`matches` says otherwise."""
    channel_pruning: ClassVar[bool] = True
    """Whether structured pruning may remove the layer's output channels (else they are kept whole; a kind may also
    refuse single modules, see :meth:`channel_refusal`)."""
    own_pruning: ClassVar[bool] = False
    """Whether the kind removes its layers' channels itself (:meth:`remove_outputs`, :meth:`remove_inputs`,
    :meth:`mask_outputs`, :meth:`channel_units`) instead of Torch-Pruning's pruner of the module type. Structured
    pruning then traces each such layer as one step from its tensor inputs to its outputs."""
    tied_channels: ClassVar[bool] = False
    """Whether the layer's input channels are its output channels (an attention layer's embedding): removing either
    removes both, and the layer couples its producers' channels with its consumers'."""

    def matches(self, module: nn.Module) -> bool:
        """True when ``module`` is of this kind."""
        return isinstance(module, self.module_type)

    def channel_refusal(self, module: nn.Module) -> str | None:
        """Why structured pruning must keep this layer's output channels whole, or ``None`` when it may remove them."""
        return None if self.channel_pruning else f"{type(module).__name__} layers keep their output channels"

    def channel_units(self, module: nn.Module) -> tuple[tuple[int, ...], ...]:
        """The output channels removed together, as a partition of ``range(out_channels)`` (by default each
        channel alone; an attention layer's heads, the two directions of a recurrent unit)."""
        return tuple((i,) for i in range(self.channels(module).out_channels))

    def remove_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Removes output channels ``idxs`` (whole :meth:`channel_units`) in place (:attr:`own_pruning` kinds)."""
        raise NotImplementedError(f"{type(self).__name__} leaves channel removal to Torch-Pruning")

    def remove_inputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Removes input channels ``idxs`` in place (:attr:`own_pruning` kinds)."""
        raise NotImplementedError(f"{type(self).__name__} leaves channel removal to Torch-Pruning")

    def mask_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Zeroes, in place, the weights through which the layer's other outputs depend on output channels ``idxs``
        (and, with :attr:`tied_channels`, read those input channels), so that it computes what
        :meth:`remove_outputs` leaves; by default nothing (a convolution's output channels are independent)."""
        return None

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """The module's compressible weight tensors (by default its ``weight``: ``(out, in, ...)``)."""
        return (CompressibleWeight("weight"),)

    def run(self, module: nn.Module, inputs: torch.Tensor) -> Any:
        """Calls the layer on one input tensor as a model would (an attention layer attends to ``inputs`` itself)."""
        return module(inputs)

    def sample_shape(self, module: nn.Module, inputs: torch.Tensor) -> tuple[int, ...]:
        """One sample's input shape from a batched call's first input (batch in dim 0 unless the kind says)."""
        return tuple(int(d) for d in inputs.shape[1:])

    def timing_input(
        self, module: nn.Module, sample_shape: tuple[int, ...], batch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """A batch of inputs :meth:`standalone`'s copy is timed on (random floats unless the layer reads indices)."""
        return torch.randn(batch, *sample_shape, generator=generator)

    @abstractmethod
    def channels(self, module: nn.Module) -> Channels:
        """Input and output channels and groups of ``module``."""

    @abstractmethod
    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """The layer's shape and cost, from one real call on a batch of one sample.

        Args:
            name: the module's name in the model.
            module: the layer.
            inputs: its first positional input.
            output: its output tensor (see :meth:`output_tensor`).
        """

    def output_tensor(self, output: Any) -> torch.Tensor:
        """The tensor that stands for a call's output: the output itself, or the first of a tuple (an LSTM's)."""
        while isinstance(output, (tuple, list)):
            output = output[0]
        return output

    def factorisable(self, module: nn.Module) -> bool:
        """Whether a truncated-SVD factorisation of the weight applies (see :meth:`factors`)."""
        return False

    def factors(self, module: nn.Module, rank: int) -> nn.Sequential:
        """Two layers whose product replaces the layer at ``rank``, uninitialised: ``factors[0]`` reads the input
        with the weight's trailing dims flattened (``rank x fan_in``), ``factors[1]`` is ``out x rank`` and takes
        the bias.

        Raises:
            ValueError: when the kind or this module cannot be factorised.
        """
        raise ValueError(f"cannot factorise {type(module).__name__}")

    @abstractmethod
    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A small layer of this kind and the shape of one input sample, for the conformance suite."""

    @abstractmethod
    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain layer of the same configuration and weights, outside any model (eval mode), for timing alone:
        called with one batch laid out as :meth:`sample_shape` describes it (batch first)."""

    @abstractmethod
    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """What the layer's latency depends on (type, configuration, one sample's input shape), as the parts of a
        latency-table key."""
