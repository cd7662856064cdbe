"""The check of every structured pruning step: the pruned model computes what the model did with the dropped
channels ignored.

The reference is the model before the step with the weights that read the dropped channels zeroed (the group's
consumers), and with the layers that remove their own channels masked by their kind
(:meth:`~methods.layer_kinds.LayerKind.mask_outputs`: a recurrent layer's reads of its removed units, an attention
layer's reads of its removed heads and input features).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from core.errors import UsageError
from methods.layer_kinds import Channels, CompressibleWeight, kind_of, weight_of

CHECK_TOLERANCE = 1e-4
"""Relative tolerance of the check (float sums in another order differ by about 1e-7)."""
DISABLE_HINT = "keep that group at 1.0 or disable channel pruning (space: channel_pruning: false)"
"""How a user gets around a group that cannot be pruned."""


class ChannelPruningError(UsageError):
    """Pruning one channel group breaks the model (a pattern the dependency graph mis-tracks)."""

    def __init__(self, leader: str, problem: str) -> None:
        super().__init__(f"channel pruning of the group led by {leader!r} {problem}; {DISABLE_HINT}")
        self.leader = leader
        """Leader of the group whose pruning failed."""
        self.problem = problem
        """What went wrong, as a verb phrase (e.g. "left a model that no longer runs (...)")."""


def _input_weights(module: nn.Module) -> list[tuple[torch.Tensor, CompressibleWeight, Channels]]:
    """The weights through which ``module`` reads its input channels, with their channel dims.

    Compressible layers tell through their kind; Torch-Pruning's other convolutions (transposed, 1-d, 3-d)
    read through ``weight``, ``(in, out / groups, ...)`` when transposed, else ``(out, in / groups, ...)``.
    """
    kind = kind_of(module)
    if kind is not None:
        channels = kind.channels(module)
        return [(weight_of(module, w.name).data, w, channels) for w in kind.weights(module) if w.in_dim is not None]
    if isinstance(module, nn.modules.conv._ConvNd):
        dims = CompressibleWeight("weight", out_dim=1, in_dim=0) if module.transposed else CompressibleWeight("weight")
        return [(module.weight.data, dims, Channels(module.in_channels, module.out_channels, module.groups))]
    return []


def _zero_inputs(weight: torch.Tensor, dims: CompressibleWeight, channels: Channels, idxs: list[int]) -> None:
    """Zeroes, in place, the part of ``weight`` that reads input channels ``idxs``."""
    if weight.shape[dims.in_dim] == channels.in_channels:  # every input channel has its own slice
        weight.index_fill_(dims.in_dim, torch.tensor(idxs), 0)
        return
    per_group, out_per_group = channels.in_channels // channels.groups, channels.out_channels // channels.groups
    for idx in idxs:  # input channel i reaches only the outputs of group i // (in / groups)
        first = idx // per_group * out_per_group
        index: list[slice | int] = [slice(None)] * weight.dim()
        index[dims.out_dim] = slice(first, first + out_per_group)
        index[dims.in_dim] = idx % per_group
        weight[tuple(index)] = 0


def _zero_consumers(graph: tp.DependencyGraph, graph_group: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroes, in place, the weights with which the group's consumers read its dropped channels, and those through
    which the layers that remove their own channels compute their kept outputs from the dropped ones.

    Returns ``(weight, original copy)`` pairs to restore them.
    """
    saved = []
    for item in graph_group:
        module, idxs = item.dep.target.module, [int(i) for i in item.idxs]
        kind = kind_of(module) if isinstance(module, nn.Module) else None
        if not idxs:
            continue
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            if kind is not None and kind.own_pruning:
                saved += [(p.data, p.data.clone()) for p in module.parameters()]
                kind.mask_outputs(module, idxs)
            continue
        for weight, dims, channels in _input_weights(module):
            saved.append((weight, weight.clone()))
            _zero_inputs(weight, dims, channels, idxs)
    return saved


def _reference(graph: tp.DependencyGraph, graph_group: Any, model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """What the model computes when later layers ignore the channels ``graph_group`` drops."""
    saved = _zero_consumers(graph, graph_group)
    try:
        out = model(example)
    except Exception as exc:  # noqa: BLE001 - a user's model can fail in many ways
        raise UsageError(f"the model fails on a random batch of shape {tuple(example.shape)} ({exc})") from exc
    finally:
        for weight, original in saved:
            weight.copy_(original)
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"channel pruning needs a model that returns a tensor, not {type(out).__name__}")
    return out


def prune_checked(
    graph: tp.DependencyGraph, graph_group: Any, model: nn.Module, example: torch.Tensor, leader: str
) -> None:
    """Prunes one group, then checks the model's output equals :func:`_reference`'s."""
    reference = _reference(graph, graph_group, model, example)
    try:
        graph_group.prune()
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning fails in many ways on patterns it mis-tracks
        raise ChannelPruningError(leader, f"failed inside Torch-Pruning ({type(exc).__name__}: {exc})") from exc
    try:
        pruned = model(example)
    except Exception as exc:  # noqa: BLE001 - a mis-pruned model fails in many ways
        raise ChannelPruningError(leader, f"left a model that no longer runs ({type(exc).__name__}: {exc})") from exc
    if pruned.shape != reference.shape:
        raise ChannelPruningError(leader, f"changed the model's output shape to {tuple(pruned.shape)}")
    error = float((pruned - reference).abs().max()) / (float(reference.abs().max()) + 1e-12)
    if not error <= CHECK_TOLERANCE:
        raise ChannelPruningError(
            leader,
            f"changed what the kept channels compute (relative error {error:.2g}): the dependency graph "
            "mis-tracks how this model mixes channels (e.g. torch.roll, flip, a channel shuffle, a shared weight, "
            "a grouped conv) or a layer normalises across channels (GroupNorm, LayerNorm)",
        )
