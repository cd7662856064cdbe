"""Torch-Pruning's dependency graph for layer kinds that remove their own channels (``LayerKind.own_pruning``).

Such layers (recurrent, attention) get a pruner that calls their kind, registered for their module types, and are
traced as one step from their tensor inputs to their outputs (:func:`build_graph`): the graph then links their
producers and consumers directly, whatever operations run inside (a fused oneDNN LSTM, a GRU's unrolled gates,
attention's projections), and every output of the call, a recurrent layer's final state included, counts as the
layer's output. :func:`channel_units` merges the kinds' units (heads, the directions of a recurrent unit) over a
channel group.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from methods.layer_kinds import LayerKind, kind_of


class KindPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning's pruner of one :attr:`~LayerKind.own_pruning` kind: removal through the kind."""

    TARGET_MODULES = None

    def __init__(self, kind: LayerKind) -> None:
        super().__init__()
        self.kind = kind

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        """Removes output channels ``idxs``."""
        self.kind.remove_outputs(layer, sorted(int(i) for i in idxs))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        """Removes input channels ``idxs``."""
        self.kind.remove_inputs(layer, sorted(int(i) for i in idxs))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        """Output channels, as the kind counts them."""
        return self.kind.channels(layer).out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        """Input channels, as the kind counts them."""
        return self.kind.channels(layer).in_channels


class TiedKindPruner(KindPruner):
    """The pruner of a kind with :attr:`~LayerKind.tied_channels`: one function for both sides, which Torch-Pruning
    reads as "the input channels are the output channels"."""

    prune_in_channels = KindPruner.prune_out_channels


def own_pruning_types(model: nn.Module) -> dict[type[nn.Module], LayerKind]:
    """The module types in ``model`` whose kind removes its own channels."""
    found: dict[type[nn.Module], LayerKind] = {}
    for module in model.modules():
        kind = kind_of(module)
        if kind is not None and kind.own_pruning:
            found.setdefault(type(module), kind)
    return found


class _Step(torch.autograd.Function):
    """One traced step from a layer's inputs to copies of its outputs (the last ``count`` tensors)."""

    @staticmethod
    def forward(ctx: Any, count: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.inputs = len(tensors)
        return tuple(t.clone() for t in tensors[len(tensors) - count:])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[None, ...]:
        return (None,) * (ctx.inputs + 1)


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """The tensors of a call's arguments or outputs, in order; ``None`` for a structure other than tensors, ``None``
    and plain tuples, lists and dicts of them (a ``PackedSequence``)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return []
    if type(value) in (tuple, list, dict):
        found: list[torch.Tensor] = []
        for item in value.values() if type(value) is dict else value:
            inner = _tensors(item)
            if inner is None:
                return None
            found += inner
        return found
    return None


def _rebuild(value: Any, tensors: Iterator[torch.Tensor]) -> Any:
    """``value`` with its tensors replaced by the next ones of ``tensors``."""
    if isinstance(value, torch.Tensor):
        return next(tensors)
    if type(value) in (tuple, list):
        return type(value)(_rebuild(item, tensors) for item in value)
    if type(value) is dict:
        return {key: _rebuild(item, tensors) for key, item in value.items()}
    return value


def _as_one_step(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook: ``output`` remade by one :class:`_Step` from the call's tensors (and a weight of the layer's, so
    that a layer reading the model's input is traced too); left as it is when the structures are not plain."""
    inputs, outputs = _tensors((args, kwargs)), _tensors(output)
    if inputs is None or not outputs or isinstance(output, PackedSequence):
        return None
    weight = next(module.parameters(), None)
    stepped = _Step.apply(len(outputs), *inputs, *([] if weight is None else [weight]), *(t.detach() for t in outputs))
    return _rebuild(output, iter(stepped))


@contextmanager
def _traced_as_steps(model: nn.Module, types: tuple[type[nn.Module], ...]) -> Iterator[None]:
    """Within the block, the layers of ``types`` in ``model`` return outputs made by :func:`_as_one_step`."""
    hooks = [m.register_forward_hook(_as_one_step, with_kwargs=True) for m in model.modules() if type(m) in types]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example``, with the kinds' own pruners."""
    types = own_pruning_types(model)
    graph = tp.DependencyGraph()
    for module_type, kind in types.items():
        graph.register_customized_layer(module_type, (TiedKindPruner if kind.tied_channels else KindPruner)(kind))
    with _traced_as_steps(model, tuple(types)):  # registered before the graph's own hooks, so that they see steps
        return graph.build_dependency(model, example_inputs=example)


def channel_units(graph: tp.DependencyGraph, full_group: Any, channels: int) -> list[list[int]] | str:
    """The group's channels (in its root's numbering) that must be removed together, as a partition into units of
    one size, in order of their first channel; or why no such partition exists.

    Args:
        graph: the dependency graph.
        full_group: the group of every channel of its root.
        channels: the root's channel count.
    """
    parent = list(range(channels))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for item in full_group:
        module, kind = item.dep.target.module, kind_of(item.dep.target.module)
        if kind is None or not kind.own_pruning or not graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        root_of = dict(zip((int(i) for i in item.idxs), (int(r) for r in item.root_idxs), strict=True))
        for unit in kind.channel_units(module):
            roots = [root_of[i] for i in unit if i in root_of]
            if len(roots) != len(unit):
                name = graph._module2name.get(module)  # noqa: SLF001 - Torch-Pruning exposes no public accessor
                return f"the units of {name!r} (e.g. {unit}) are not all in the group"
            for other in roots[1:]:
                parent[find(other)] = find(roots[0])
    units: dict[int, list[int]] = {}
    for i in range(channels):
        units.setdefault(find(i), []).append(i)
    sizes = {len(unit) for unit in units.values()}
    if len(sizes) > 1:
        return f"its layers remove channels in units of different sizes ({sorted(sizes)})"
    return sorted(units.values(), key=lambda unit: unit[0])

