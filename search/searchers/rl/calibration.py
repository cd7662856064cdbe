"""Calibrates the budget wall's :class:`~search.searchers.rl.budget_wall.CostModel` against an evaluator.

Sizes come from real packed bytes: every probe policy is compressed to size the header, and each
layer's payload at its original shape is measured by packing its weight alone, as the pipeline does
(:class:`methods.packed_size.Payload`). Channel coupling is found by really pruning each channel group. Latency points
are the evaluator's own latency (measured or predicted, as its settings say) of uniformly pruned models,
on each runtime the search may choose.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from torch import nn

from core.policy import LayerChoice, Policy
from core.spec import LayerSpec
from methods.discovery import discover_layers, total_macs
from methods.layer_kinds import layer_weights, weight_keys
from methods.packed_size import Payload
from methods.packing import PREFIX_BYTES, header_bytes
from methods.pipeline import CompressedModel, Refinement
from methods.structured import ChannelGroup, prune_channels
from search.searchers.rl.budget_wall import CostModel, LatencyCurve, LayerShape

if TYPE_CHECKING:
    from envs.device import DeviceProfile
    from envs.evaluator import EvaluatorSettings
    from envs.tasks import Task

HEADER_SLACK = 1.1
"""Factor on the largest header measured on the calibration files."""
HEADER_SLACK_PER_TENSOR = 16
"""Extra header bytes allowed per tensor (digits of offsets, counts and lengths)."""


class WallEvaluator(Protocol):
    """What the calibration uses of :class:`envs.evaluator.Evaluator`."""

    @property
    def task(self) -> Task:
        """The task: its ``model`` and ``input_shape``."""

    @property
    def device(self) -> DeviceProfile:
        """The device profile: its ``channel_multiple``."""

    @property
    def settings(self) -> EvaluatorSettings:
        """The evaluator settings: ``finetune.steps`` (a per-candidate fine-tune changes the codes)."""

    @property
    def layers(self) -> Sequence[LayerSpec]:
        """Compressible layers in execution order."""

    @property
    def groups(self) -> Sequence[ChannelGroup]:
        """Channel groups (leader, channels)."""

    def compress(self, policy: Policy, refinement: Refinement | None = None) -> CompressedModel:
        """Applies a policy to a copy of the task's model and packs it."""

    def latency_ms(self, model: nn.Module) -> float:
        """Latency of a decoded model on the device, as the evaluator reports it (the evaluator also takes
        ``runtime=``, asked only when the runtime is searched)."""


def _raw_bytes(model: nn.Module, weights: set[str]) -> int:
    """Bytes of the tensors stored raw (everything but the compressible weights)."""
    return sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in weights)


def _coupling(
    evaluator: WallEvaluator, probe_keep: float, weights: set[str], full: int
) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Per channel removed from each group: output and input channels each layer loses, and raw bytes.

    Found by really pruning each group alone to ``probe_keep``; ``weights`` are the compressible weights'
    names, ``full`` the raw bytes of the unpruned model (:func:`_raw_bytes`).
    """
    task, multiple, specs = evaluator.task, evaluator.device.channel_multiple, evaluator.layers
    out = [[0.0] * len(evaluator.groups) for _ in specs]
    inn = [[0.0] * len(evaluator.groups) for _ in specs]
    raw = [0.0] * len(evaluator.groups)
    for g, group in enumerate(evaluator.groups):
        removed = group.channels - group.kept(probe_keep, multiple)
        if removed == 0:
            continue
        model = copy.deepcopy(task.model)
        prune_channels(model, task.input_shape, {group.leader: probe_keep}, multiple)
        after = {spec.name: spec for spec in discover_layers(model, task.input_shape)}
        for i, spec in enumerate(specs):
            out[i][g] = (spec.out_channels - after[spec.name].out_channels) / removed
            inn[i][g] = (spec.in_channels - after[spec.name].in_channels) / removed
        raw[g] = (full - _raw_bytes(model, weights)) / removed
    return out, inn, raw


LatencyPoints = Sequence[Sequence[float]] | Mapping[str, Sequence[Sequence[float]]]
"""``(macs, ms)`` calibration points: one list, or one per runtime when the runtime is searched."""


def calibrate(
    evaluator: WallEvaluator,
    probes: Sequence[Policy],
    keeps: Sequence[float] = (),
    latency_margin: float | None = 0.1,
    latency_points: LatencyPoints | None = None,
    runtimes: Sequence[str] = (),
) -> CostModel:
    """Builds the cost model of ``evaluator``'s network from real packed files and latencies.

    Args:
        evaluator: an :class:`envs.evaluator.Evaluator` (see :class:`WallEvaluator`).
        probes: policies packed to size the header (include the most compressed one, on the runtime with
            the longest name: the header names it).
        keeps: uniform keep ratios whose latency is taken for the latency curve (empty: channels are not
            searched, and coupling is not measured).
        latency_margin: safety margin of the latency curve (``None``: no latency curve).
        latency_points: earlier calibration to reuse instead (e.g. on resume), per runtime with ``runtimes``.
        runtimes: the runtimes the search chooses among (empty: the device's one): one latency curve each,
            in :attr:`CostModel.latencies` (see :meth:`CostModel.on`).
    """
    task, specs = evaluator.task, evaluator.layers
    names = [spec.name for spec in specs]
    compressible = {key for name in names for key in weight_keys(task.model, name)}
    raw = _raw_bytes(task.model, compressible)
    weights = [layer_weights(task.model, name) for name in names]
    headers, models = [], []
    dense = Policy.from_choices({name: LayerChoice() for name in names})
    timed = [*(Policy.from_choices({g.leader: LayerChoice(keep=k) for g in evaluator.groups}) for k in keeps), dense]
    for i, policy in enumerate([*probes, *timed]):
        compressed = evaluator.compress(policy, Refinement())
        headers.append(header_bytes(compressed.blob))
        if i >= len(probes):
            models.append(compressed.model)
    tensors = len(task.model.state_dict())
    allowance = math.ceil(max(headers) * HEADER_SLACK) + HEADER_SLACK_PER_TENSOR * tensors
    points: dict[str | None, list[tuple[int, float]]] = {}
    if latency_points is not None:
        given = latency_points if isinstance(latency_points, Mapping) else {None: latency_points}
        points = {runtime: [(int(macs), float(ms)) for macs, ms in rows] for runtime, rows in given.items()}
    elif latency_margin is not None:
        macs = [total_macs(discover_layers(model, task.input_shape)) for model in models]
        points = {runtime: [(m, _latency(evaluator, model, runtime)) for m, model in zip(macs, models, strict=True)]
                  for runtime in (tuple(runtimes) or (None,))}
    curves = {} if latency_margin is None else {
        runtime: LatencyCurve.fit(rows, latency_margin) for runtime, rows in points.items() if rows
    }
    first = runtimes[0] if runtimes else None
    coupled = bool(keeps) and bool(evaluator.groups)
    out, inn, raw_coupling = _coupling(evaluator, min(keeps), compressible, raw) if coupled else ([], [], [])
    index_of = {name: i for i, name in enumerate(names)}
    return CostModel(
        layers=tuple(LayerShape.from_spec(spec) for spec in specs),
        rest_bytes=PREFIX_BYTES + allowance + raw,
        group_channels=tuple(g.channels for g in evaluator.groups) if coupled else (),
        group_leaders=tuple(index_of[g.leader] for g in evaluator.groups) if coupled else (),
        group_units=tuple(g.unit for g in evaluator.groups) if coupled else (),
        out_coupling=tuple(tuple(row) for row in out),
        in_coupling=tuple(tuple(row) for row in inn),
        raw_coupling=tuple(raw_coupling),
        payload=Payload(weights, exact_codes=evaluator.settings.finetune.steps == 0),
        channel_multiple=evaluator.device.channel_multiple,
        latency=curves.get(first, next(iter(curves.values()), None)),
        latencies=tuple((runtime, curve) for runtime, curve in curves.items() if runtime is not None),
    )


def _latency(evaluator: WallEvaluator, model: nn.Module, runtime: str | None) -> float:
    """The evaluator's latency of ``model`` on ``runtime`` (its default runtime for ``None``)."""
    if runtime is None:
        return evaluator.latency_ms(model)
    return evaluator.latency_ms(model, runtime=runtime)  # type: ignore[call-arg]
