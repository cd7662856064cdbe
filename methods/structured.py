"""Structured channel pruning over Torch-Pruning's dependency graph.

Removing an output channel of one layer also resizes every layer that depends on it
(BatchNorm, the next layer's inputs, the other side of a residual add, ...). Coupled
layers form one *channel group*; the group's keep ratio is the one the policy gives
its leader (the first layer of the group in the graph).

Which channels of a group go is set by an importance criterion, a name in
:data:`methods.channel_importance.CHANNEL_IMPORTANCES` (``l1``, ``l2``, ``bn``, ``taylor``), computed
by Torch-Pruning's importance classes over the layers of the group; where a criterion finds nothing
to score (``bn`` without an affine BatchNorm) the group falls back to ``l1``. Criteria that need data
(``taylor``) read the gradients of one eval-mode cross-entropy forward/backward pass over
calibration data given by the caller. Group members are the layers of a registered layer kind
(:mod:`methods.layer_kinds`) whose output channels the group removes.

Recurrent layers (hidden units) and attention layers (whole heads, with the input and output features
``nn.MultiheadAttention`` ties to them) remove their own channels (:mod:`methods.kind_pruning`): a group
with them removes whole *units* (a head's features, a unit of both directions), scored by the mean of
their channels' importance, and keeps whole units (:attr:`ChannelGroup.unit`). A kind may keep a
layer's channels whole (an attention layer whose keys and values have sizes of their own); a warning
names the layer.

Torch-Pruning's graph does not understand every way a forward pass can mix channels
(``torch.roll`` or ``flip`` over channels, channel shuffles, a gate with one channel
broadcast over many, ``chunk``, ``repeat``, weights used through ``F.conv2d``, grouped
non-depthwise convs, ...): it may then crash, build a model that no longer runs, or one
that silently computes something else. Every pruning step is therefore checked:
:func:`prune_channels` raises :class:`ChannelPruningError` (a ``UsageError``) naming the
group's leader, and :func:`channel_groups` leaves out, with a warning, the groups that fail
a trial pruning, so that searches prune the rest of the network and never a broken group.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from core.errors import UsageError
from methods.channel_importance import FALLBACK, ChannelImportance, check_channel_importance
from methods.examples import random_batch, zeros_batch
from methods.kind_pruning import GENERATED_REASON, build_graph, channel_units, own_pruning_types, touches_generated
from methods.layer_kinds import kind_of
from methods.objective import task_loss
from methods.structured_check import ChannelPruningError, prune_checked

logger = logging.getLogger(__name__)

History = list[list[Any]]
"""Torch-Pruning's pruning history: ``[module name, is-out-channel, [indices]]`` entries."""
CalibrationData = tuple[torch.Tensor, torch.Tensor]
"""``(inputs, int64 labels)`` for the data-driven ``taylor`` criterion."""
TRIAL_KEEP = 0.5
"""Keep ratio of the trial pruning with which :func:`channel_groups` tests each group."""
CHECK_BATCH = 2
"""Samples of the random input on which every pruning step is checked."""


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels must be pruned together."""

    leader: str
    """Module name whose policy ``keep`` ratio applies to the group."""
    members: tuple[str, ...]
    """All compressible layers (see :mod:`methods.layer_kinds`) whose output channels the group removes."""
    channels: int
    """Channels in the group before pruning."""
    unit: int = 1
    """Channels removed together (an attention head's features, a recurrent unit's two directions): the group keeps
    whole units (:meth:`kept`)."""

    def kept(self, keep: float, multiple: int = 1) -> int:
        """Channels left when keeping ``keep`` of the group, rounded to ``multiple`` and to whole units."""
        return kept_channels(self.channels, keep, multiple, self.unit)


def _graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph, traced in eval mode (the model's mode is restored).

    Tracing needs autograd, so it works even when the caller runs under ``torch.no_grad`` or
    ``torch.inference_mode``.
    """
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # layers it cannot prune
            return build_graph(model, zeros_batch(input_shape))
    except Exception as exc:  # noqa: BLE001 - tracing a user's model can fail in many ways
        raise UsageError(f"cannot trace the model's channel dependencies ({exc}); disable channel pruning") from exc
    finally:
        model.train(was_training)


def _refusal(graph: tp.DependencyGraph, module: nn.Module) -> str | None:
    """Why ``module``'s output channels are kept whole, or ``None``: its kind's reason, or, for a kind whose inputs
    are its outputs, reading the model's input (whose channels stay)."""
    kind = kind_of(module)
    if kind.tied_channels and not graph.module2node[module].inputs:
        return "it reads the model's input, whose channels are its own"
    return kind.channel_refusal(module)


def _kept_whole(model: nn.Module, graph: tp.DependencyGraph) -> tuple[list[nn.Module], dict[nn.Module, str]]:
    """Layers whose output channels are never pruned: those that produce the network's output, and those their
    layer kind keeps whole (:meth:`~methods.layer_kinds.LayerKind.channel_refusal`), with why."""
    layers = [m for m in model.modules() if kind_of(m) is not None and m in graph.module2node]
    outputs = [m for m in layers if not graph.module2node[m].outputs] or layers[-1:]
    refused = {m: _refusal(graph, m) for m in layers if m not in outputs}
    return outputs, {m: reason for m, reason in refused.items() if reason is not None}


@dataclass(frozen=True)
class _Found:
    """A channel group with its root module in the graph and its units (root channel numbers)."""

    root: nn.Module
    group: ChannelGroup
    units: list[list[int]]


def _groups(model: nn.Module, graph: tp.DependencyGraph, warn: bool = False) -> list[_Found]:
    """The model's channel groups; with ``warn``, a warning for each layer a kind refuses to prune and each group
    whose units do not fit."""
    names = graph._module2name  # noqa: SLF001 - Torch-Pruning exposes no public accessor
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    outputs, refused = _kept_whole(model, graph)
    roots = (nn.modules.conv._ConvNd, nn.Linear, *own_pruning_types(model))
    found = []
    try:
        all_groups = list(graph.get_all_groups(ignored_layers=outputs + list(refused), root_module_types=roots))
    except Exception as exc:  # noqa: BLE001 - grouping a user's model can fail in many ways
        raise UsageError(f"cannot group the model's channels ({exc}); disable channel pruning") from exc
    for module, reason in refused.items() if warn else ():
        if kind_of(module).channel_pruning:  # not for kinds that never prune (embeddings)
            logger.warning("keeping every output channel of %r (and of the layers tied to it): %s",
                           names[module], reason)
    for group in all_groups:
        root = group[0].dep.target.module
        if touches_generated(group):
            if warn:
                logger.warning("leaving channel group %r unpruned: %s", names[root], GENERATED_REASON)
            continue
        members = []
        for item in group:
            module = item.dep.target.module
            if kind_of(module) is not None and graph.is_out_channel_pruning_fn(item.dep.handler):
                members.append(names[module])
        channels = graph.get_out_channels(root)
        if not members or channels is None or channels < 2:  # e.g. led by a ConvTranspose2d
            continue
        members.sort(key=order.__getitem__)
        units = channel_units(graph, group, int(channels))
        if isinstance(units, str) or len(units) < 2:
            if warn and isinstance(units, str):
                logger.warning("leaving channel group %r unpruned: %s", members[0], units)
            continue
        group_of = ChannelGroup(members[0], tuple(members), int(channels), unit=len(units[0]))
        found.append(_Found(root, group_of, units))
    return sorted(found, key=lambda f: order[f.group.leader])


GroupItem = tuple[nn.Module, bool, list[int], list[int]]
"""One layer of a channel group: the module, whether the group removes its outputs (else its inputs), the indices
it removes and the group channel of each."""


def traced_groups(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[ChannelGroup, list[GroupItem]]]:
    """Each channel group (unchecked: see :func:`channel_groups`) with every layer it touches.

    Raises:
        UsageError: when Torch-Pruning cannot trace or group the model.
    """
    graph = _graph(model, input_shape)
    traced = []
    for found in _groups(model, graph):
        pruner = graph.get_pruner_of_module(found.root)
        full = graph.get_pruning_group(found.root, pruner.prune_out_channels, list(range(found.group.channels)))
        items = [
            (item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler),
             [int(i) for i in item.idxs], [int(r) for r in item.root_idxs])
            for item in full
        ]
        traced.append((found.group, items))
    return traced


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """Lists the model's prunable channel groups (the classifier output is excluded).

    Each group is tested by a trial pruning of a copy (every group at ``TRIAL_KEEP``, checked
    as in :func:`prune_channels`); groups whose pruning breaks the model are left out, with a
    warning naming their leader, so that the rest of the network can still be pruned. A model whose channel
    dependencies Torch-Pruning cannot trace or group (a GRU in it, for one) has no groups: one warning says so,
    and the rest of the compression applies.
    """
    try:
        found = [f.group for f in _groups(model, _graph(model, input_shape), warn=True)]
    except UsageError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        logger.warning("every channel is kept: Torch-Pruning cannot trace or group this model's channels (%s: %s)",
                       type(cause).__name__, cause)
        return []
    broken = _unprunable(model, input_shape, found)
    return [group for group in found if group.leader not in broken]


def _unprunable(model: nn.Module, input_shape: Sequence[int], groups: Sequence[ChannelGroup]) -> set[str]:
    """Leaders of the groups whose trial pruning fails; one fresh trial per failure found."""
    broken: set[str] = set()
    while len(broken) < len(groups):
        keep = {group.leader: TRIAL_KEEP for group in groups if group.leader not in broken}
        try:
            prune_channels(copy.deepcopy(model), input_shape, keep)
        except ChannelPruningError as exc:
            if exc.leader in broken or exc.leader not in keep:
                raise
            logger.warning("leaving channel group %r unpruned: its trial pruning %s", exc.leader, exc.problem)
            broken.add(exc.leader)
            continue
        break
    return broken


def kept_channels(channels: int, keep: float, multiple: int = 1, unit: int = 1) -> int:
    """Channels left when keeping ``keep`` of ``channels``, rounded to ``multiple`` and to whole units of ``unit``
    channels (to their least common multiple), at least one (unit)."""
    multiple = math.lcm(max(1, int(multiple)), max(1, int(unit)))
    kept = int(round(channels * keep / multiple)) * multiple
    return int(min(channels, max(kept, min(multiple, channels), 1)))


def _scores(graph_group: Any, scorer: tp.importance.Importance, channels: int) -> torch.Tensor:
    """Per-channel importance of a full group; the ``FALLBACK`` criterion's when ``scorer`` finds nothing to score,
    and equal scores (the last channels go) when neither does (a group of recurrent and attention layers only)."""
    scores = scorer(graph_group)
    if scores is None:
        scores = check_channel_importance(FALLBACK).scorer()(graph_group)
    return torch.zeros(channels) if scores is None else scores.flatten().cpu()


def _check_arguments(importance: str, data: CalibrationData | None) -> ChannelImportance:
    criterion = check_channel_importance(importance)
    if criterion.needs_data:
        if data is None:
            raise ValueError(
                f"the {importance!r} channel importance needs calibration data: pass data=(inputs, labels)"
            )
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise ValueError("data must be a pair of tensors (inputs, labels)")
    return criterion


@contextmanager
def _kept_flags(model: nn.Module) -> Iterator[None]:
    """Restores the train/eval mode and each parameter's ``requires_grad`` on exit.

    Parameters are matched by name: pruning replaces the parameter objects (and Torch-Pruning
    switches the model to eval mode while tracing).
    """
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    was_training = model.training
    try:
        yield
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, True))
        model.train(was_training)


@contextmanager
def _gradients(model: nn.Module, data: CalibrationData | None) -> Iterator[None]:
    """Fills every parameter's ``.grad`` with the eval-mode cross-entropy gradient on ``data``.

    Does nothing without data. Every ``.grad`` is cleared on exit; call under :func:`_kept_flags`.
    """
    if data is None:
        yield
        return
    try:
        model.eval()
        for param in model.parameters():
            param.grad = None
            param.requires_grad_(True)
        inputs, labels = data
        with torch.enable_grad():
            task_loss(model(inputs), labels).backward()
        yield
    finally:
        for param in model.parameters():
            param.grad = None


def _select(graph: tp.DependencyGraph, found: _Found, n_keep: int, scorer: tp.importance.Importance) -> Any:
    """The Torch-Pruning group that drops the least important units (mean channel score) down to ``n_keep``
    channels."""
    root, group = found.root, found.group
    pruner = graph.get_pruner_of_module(root)
    try:
        full = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(group.channels)))
        scores = _scores(full, scorer, group.channels)
        order = torch.argsort(torch.stack([scores[unit].mean() for unit in found.units]), stable=True)
        drop = sorted(i for u in order[: (group.channels - n_keep) // group.unit] for i in found.units[int(u)])
        return graph.get_pruning_group(root, pruner.prune_out_channels, drop)
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning fails in many ways on patterns it mis-tracks
        raise ChannelPruningError(group.leader, f"failed inside Torch-Pruning ({type(exc).__name__}: {exc})") from exc


def prune_channels(
    model: nn.Module,
    input_shape: Sequence[int],
    keep: Mapping[str, float],
    multiple: int = 1,
    importance: str = "l1",
    data: CalibrationData | None = None,
) -> History:
    """Physically removes the least important output channels of each group, in place.

    Groups are pruned one after the other, each scored on the model as earlier groups left it
    (``taylor`` gradients come from one pass over the unpruned model and are pruned along).
    After each group, the model is run in eval mode on a small random batch and compared with
    the model before that step whose later layers ignore the dropped channels; a failure inside
    Torch-Pruning, a model that no longer runs or a different output raises
    :class:`ChannelPruningError` naming the group's leader. Groups that mix channel statistics
    (GroupNorm, LayerNorm over channels) also fail this check. The model is then left partially
    pruned: prune a copy.

    Args:
        model: network to prune; modified in place. Its mode and ``requires_grad`` flags are kept;
            ``taylor`` clears every ``.grad``.
        input_shape: one sample's shape, for tracing.
        keep: kept fraction per group leader; leaders not listed keep everything.
        multiple: kept channel counts are rounded to this multiple (and to whole units, see :class:`ChannelGroup`).
        importance: channel criterion, a name in :data:`methods.channel_importance.CHANNEL_IMPORTANCES`.
        data: ``(inputs, labels)`` calibration batch; required by criteria that need data (``taylor``),
            unused otherwise.

    Returns:
        The pruning history, JSON-serialisable, replayable with :func:`replay_pruning`.

    Raises:
        ValueError: an unknown criterion (``UnknownEntryError``), or one that needs data without it.
        ChannelPruningError: pruning a group breaks the model (a :class:`UsageError`).
    """
    criterion = _check_arguments(importance, data)
    if all(ratio >= 1.0 for ratio in keep.values()):
        return []
    graph = _graph(model, input_shape)
    example = random_batch(input_shape, CHECK_BATCH, torch.Generator().manual_seed(0))
    scorer = criterion.scorer()
    with _kept_flags(model), _gradients(model, data if criterion.needs_data else None), torch.no_grad():
        model.eval()
        for found in _groups(model, graph):
            group = found.group
            n_keep = group.kept(keep.get(group.leader, 1.0), multiple)
            if n_keep < group.channels:
                prune_checked(graph, _select(graph, found, n_keep, scorer), model, example, group.leader)
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()]


def replay_pruning(model: nn.Module, input_shape: Sequence[int], history: History) -> None:
    """Re-applies a recorded pruning history to a fresh copy of the architecture, in place."""
    if not history:
        return
    _graph(model, input_shape).load_pruning_history([list(entry) for entry in history])
