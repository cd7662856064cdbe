"""Structured channel pruning over Torch-Pruning's dependency graph.

Removing an output channel of one layer also resizes every layer that depends on it
(BatchNorm, the next layer's inputs, the other side of a residual add, ...). Coupled
layers form one *channel group*; the group's keep ratio is the one the policy gives
its leader (the first layer of the group in the graph).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from search.errors import UsageError

History = list[list[Any]]
"""Torch-Pruning's pruning history: ``[module name, is-out-channel, [indices]]`` entries."""


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels must be pruned together."""

    leader: str
    """Module name whose policy ``keep`` ratio applies to the group."""
    members: tuple[str, ...]
    """All Conv2d/Linear layers whose output channels the group removes."""
    channels: int
    """Channels in the group before pruning."""


def _graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - tracing a user's model can fail in many ways
        raise UsageError(f"cannot trace the model's channel dependencies ({exc}); disable channel pruning") from exc


def _classifier(model: nn.Module, graph: tp.DependencyGraph) -> list[nn.Module]:
    """The layers that produce the network's output; their outputs are never pruned."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m in graph.module2node]
    outputs = [m for m in layers if not graph.module2node[m].outputs]
    return outputs or layers[-1:]


def _groups(model: nn.Module, graph: tp.DependencyGraph) -> list[tuple[nn.Module, ChannelGroup]]:
    names = graph._module2name  # noqa: SLF001 - Torch-Pruning exposes no public accessor
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found = []
    for group in graph.get_all_groups(ignored_layers=_classifier(model, graph)):
        root = group[0].dep.target.module
        members = []
        for item in group:
            module = item.dep.target.module
            if isinstance(module, (nn.Conv2d, nn.Linear)) and graph.is_out_channel_pruning_fn(item.dep.handler):
                members.append(names[module])
        channels = graph.get_out_channels(root)
        if channels is None or channels < 2:
            continue
        members.sort(key=order.__getitem__)
        found.append((root, ChannelGroup(leader=members[0], members=tuple(members), channels=int(channels))))
    return sorted(found, key=lambda pair: order[pair[1].leader])


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """Lists the model's prunable channel groups (the classifier output is excluded)."""
    return [group for _, group in _groups(model, _graph(model, input_shape))]


def kept_channels(channels: int, keep: float, multiple: int = 1) -> int:
    """Channels left when keeping ``keep`` of ``channels``, rounded to ``multiple``, at least one."""
    multiple = max(1, int(multiple))
    kept = int(round(channels * keep / multiple)) * multiple
    return int(min(channels, max(kept, min(multiple, channels), 1)))


def _importance(graph_group: Any) -> torch.Tensor:
    scorer = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    return scorer(graph_group)


def prune_channels(
    model: nn.Module,
    input_shape: Sequence[int],
    keep: Mapping[str, float],
    multiple: int = 1,
) -> History:
    """Physically removes the least important (group L1) output channels, in place.

    Args:
        model: network to prune; modified in place.
        input_shape: one sample's shape, for tracing.
        keep: kept fraction per group leader; leaders not listed keep everything.
        multiple: kept channel counts are rounded to this multiple.

    Returns:
        The pruning history, JSON-serialisable, replayable with :func:`replay_pruning`.
    """
    if all(ratio >= 1.0 for ratio in keep.values()):
        return []
    graph = _graph(model, input_shape)
    for root, group in _groups(model, graph):
        ratio = keep.get(group.leader, 1.0)
        n_keep = kept_channels(group.channels, ratio, multiple)
        if n_keep >= group.channels:
            continue
        pruner = graph.get_pruner_of_module(root)
        full = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(group.channels)))
        order = torch.argsort(_importance(full), stable=True)
        drop = sorted(int(i) for i in order[: group.channels - n_keep])
        graph.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()]


def replay_pruning(model: nn.Module, input_shape: Sequence[int], history: History) -> None:
    """Re-applies a recorded pruning history to a fresh copy of the architecture, in place."""
    if not history:
        return
    _graph(model, input_shape).load_pruning_history([list(entry) for entry in history])
