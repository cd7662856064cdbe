"""Calibrates the budget wall's :class:`~search.searchers.rl.budget_wall.CostModel` against an evaluator.

Sizes come from real packed bytes: every probe policy is compressed to size the header, and each
layer's payload at its original shape is measured by packing its weight alone, as the pipeline does
(:class:`methods.packed_size.Payload`). Channel coupling is found by really pruning each channel group. Latency points
are the evaluator's own latency (measured or predicted, as its settings say) of uniformly pruned models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from torch import nn

from core.policy import LayerChoice, Policy
from core.spec import LayerSpec
from methods.discovery import discover_layers, total_macs
from methods.packed_size import Payload
from methods.packing import PREFIX_BYTES, header_bytes
from methods.pipeline import CompressedModel, Refinement
from methods.structured import ChannelGroup, kept_channels, prune_channels
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
        """Latency of a decoded model on the device, as the evaluator reports it."""


def _raw_bytes(model: nn.Module, weights: set[str]) -> int:
    """Bytes of the tensors stored raw (everything but the compressible weights)."""
    return sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in weights)


def _coupling(evaluator: WallEvaluator, probe_keep: float) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Per channel removed from each group: output and input channels each layer loses, and raw bytes.

    Found by really pruning each group alone to ``probe_keep``.
    """
    task, multiple, specs = evaluator.task, evaluator.device.channel_multiple, evaluator.layers
    weights = {f"{spec.name}.weight" for spec in specs}
    full = _raw_bytes(task.model, weights)
    out = [[0.0] * len(evaluator.groups) for _ in specs]
    inn = [[0.0] * len(evaluator.groups) for _ in specs]
    raw = [0.0] * len(evaluator.groups)
    for g, group in enumerate(evaluator.groups):
        removed = group.channels - kept_channels(group.channels, probe_keep, multiple)
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


def calibrate(
    evaluator: WallEvaluator,
    probes: Sequence[Policy],
    keeps: Sequence[float] = (),
    latency_margin: float | None = 0.1,
    latency_points: Sequence[Sequence[float]] | None = None,
) -> CostModel:
    """Builds the cost model of ``evaluator``'s network from real packed files and latencies.

    Args:
        evaluator: an :class:`envs.evaluator.Evaluator` (see :class:`WallEvaluator`).
        probes: policies packed to size the header (include the most compressed one).
        keeps: uniform keep ratios whose latency is taken for the latency curve (empty: channels are not
            searched, and coupling is not measured).
        latency_margin: safety margin of the latency curve (``None``: no latency curve).
        latency_points: earlier ``(macs, ms)`` calibration to reuse instead (e.g. on resume).
    """
    task, specs = evaluator.task, evaluator.layers
    names = [spec.name for spec in specs]
    modules = dict(task.model.named_modules())
    weights = {f"{name}.weight" for name in names}
    raw = _raw_bytes(task.model, weights)
    layer_weights = [modules[name].weight.detach() for name in names]
    points, headers = [], []
    dense = Policy.from_choices({name: LayerChoice() for name in names})
    timed = [*(Policy.from_choices({g.leader: LayerChoice(keep=k) for g in evaluator.groups}) for k in keeps), dense]
    for i, policy in enumerate([*probes, *timed]):
        compressed = evaluator.compress(policy, Refinement())
        headers.append(header_bytes(compressed.blob))
        if latency_margin is not None and latency_points is None and i >= len(probes):
            macs = total_macs(discover_layers(compressed.model, task.input_shape))
            points.append((macs, evaluator.latency_ms(compressed.model)))
    tensors = len(task.model.state_dict())
    allowance = math.ceil(max(headers) * HEADER_SLACK) + HEADER_SLACK_PER_TENSOR * tensors
    if latency_points is not None:
        points = [(int(macs), float(ms)) for macs, ms in latency_points]
    coupled = bool(keeps) and bool(evaluator.groups)
    out, inn, raw_coupling = _coupling(evaluator, min(keeps)) if coupled else ([], [], [])
    index_of = {name: i for i, name in enumerate(names)}
    return CostModel(
        layers=tuple(LayerShape.from_spec(spec) for spec in specs),
        rest_bytes=PREFIX_BYTES + allowance + raw,
        group_channels=tuple(g.channels for g in evaluator.groups) if coupled else (),
        group_leaders=tuple(index_of[g.leader] for g in evaluator.groups) if coupled else (),
        out_coupling=tuple(tuple(row) for row in out),
        in_coupling=tuple(tuple(row) for row in inn),
        raw_coupling=tuple(raw_coupling),
        payload=Payload(layer_weights, exact_codes=evaluator.settings.finetune.steps == 0),
        channel_multiple=evaluator.device.channel_multiple,
        latency=None if latency_margin is None or not points else LatencyCurve.fit(points, latency_margin),
    )
