"""Conservative cost models of a policy, and AMC's action wall that keeps every episode within budget.

:func:`apply_wall` is pure: for layer ``t`` it moves the agent's action toward more compression
just far enough that the layers after ``t``, at their most compressed, can still meet every limit
under a :class:`CostModel`. By induction the finished policy meets the limits under the model.

* Size is an upper bound of the real packed file (``methods/packed_size.py``; tested against real
  files). A layer whose shape is unchanged is measured exactly by the calibration (``calibration.py``);
  a channel-pruned layer counts the bound of its new shape. Raw tensors (biases, BatchNorm) shrink
  with the removed channels; the header gets an allowance measured on real files plus slack.
* Latency is a prediction, not a guarantee: eager fp32 latency depends only on the kept channels,
  so a monotone :class:`LatencyCurve` over MACs is calibrated on the evaluator's latency of uniformly
  pruned models and inflated by a safety margin; one curve per runtime when the runtime is searched
  (:meth:`CostModel.on` gives the model of one runtime).
* MACs (dense count, AMC's FLOPs budget) are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.policy import LayerChoice
from core.spec import LayerSpec
from methods.packed_size import weight_bytes_upper
from methods.pruning import pruned_count
from methods.structured import kept_channels

WALL_RESOLUTION = 64
"""Steps of the path from the agent's action to the most compressed action."""


@dataclass(frozen=True)
class Limits:
    """Limits of one episode; ``None`` means unconstrained."""

    size_bytes: float | None = None
    """Largest packed file, bytes."""
    latency_ms: float | None = None
    """Largest predicted latency, ms."""
    macs: float | None = None
    """Largest dense MACs per sample."""

    def __post_init__(self) -> None:
        if any(v is not None and v <= 0 for v in (self.size_bytes, self.latency_ms, self.macs)):
            raise ValueError("limits must be positive")

    @property
    def speed_only(self) -> Limits:
        """The limits that only channel pruning can meet (latency, MACs)."""
        return replace(self, size_bytes=None)

    @property
    def empty(self) -> bool:
        """True when nothing is limited."""
        return self.size_bytes is None and self.latency_ms is None and self.macs is None


@dataclass(frozen=True)
class Costs:
    """Modelled costs of a full policy."""

    size_bytes: int
    """Upper bound of the packed file, bytes."""
    latency_ms: float
    """Predicted latency with the safety margin (0 without a latency model)."""
    macs: int
    """Dense MACs per sample."""

    def excess(self, limits: Limits) -> float:
        """Summed relative excess over the limits (0 when every limit holds)."""
        pairs = ((self.size_bytes, limits.size_bytes), (self.latency_ms, limits.latency_ms), (self.macs, limits.macs))
        return sum(max(0.0, value / limit - 1.0) for value, limit in pairs if limit is not None)

    def fits(self, limits: Limits) -> bool:
        """True when every limit holds."""
        return self.excess(limits) == 0.0


@dataclass(frozen=True)
class LatencyCurve:
    """Monotone piecewise-linear latency over dense MACs, times ``1 + margin``.

    The wall evaluates costs thousands of times per episode on choices alone, so it needs latency as a
    cheap, monotone function of numbers; the evaluator's predictor (``envs/latency_model.py``) takes a
    built model. The curve's points are the evaluator's own latencies (measured or predicted).
    """

    macs: tuple[int, ...]
    """Calibration MACs, ascending."""
    ms: tuple[float, ...]
    """Measured latency at those MACs, made non-decreasing."""
    margin: float = 0.1
    """Relative safety margin added to every prediction."""

    def __post_init__(self) -> None:
        if not self.macs or len(self.macs) != len(self.ms) or self.margin < 0:
            raise ValueError("a latency model needs matching, non-empty points and a margin >= 0")

    @classmethod
    def fit(cls, points: Sequence[tuple[int, float]], margin: float) -> LatencyCurve:
        """Sorts the points, merges equal MACs (max) and enforces monotonicity (running max)."""
        merged: dict[int, float] = {}
        for macs, ms in points:
            merged[int(macs)] = max(float(ms), merged.get(int(macs), 0.0))
        xs = sorted(merged)
        ys = np.maximum.accumulate([merged[x] for x in xs])
        return cls(tuple(xs), tuple(float(y) for y in ys), margin)

    def predict(self, macs: float) -> float:
        """Interpolated latency (clamped to the end points, which is conservative) with the margin."""
        return float(np.interp(macs, self.macs, self.ms)) * (1.0 + self.margin)


@dataclass(frozen=True)
class LayerShape:
    """Static shape of one compressible layer."""

    out_channels: int
    """Output channels / features before pruning."""
    in_channels: int
    """Input channels / features before pruning."""
    groups: int
    """Convolution groups."""
    depthwise: bool
    """Depthwise conv (one input channel per group, whatever the width)."""
    kernel_area: int
    """Weight elements per (output, input-per-group) pair."""
    positions: int
    """Output positions per sample (MACs per weight element)."""
    tensors: tuple[tuple[int, int], ...] = ()
    """``(elements, rows)`` of each compressible weight tensor at full width (:attr:`LayerSpec.tensors`)."""

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> LayerShape:
        """Shape of a discovered layer."""
        depthwise = spec.kind == "depthwise"
        per_group = 1 if depthwise else max(1, spec.in_channels // spec.groups)
        return cls(spec.out_channels, spec.in_channels, spec.groups, depthwise,
                   max(1, spec.params // (spec.out_channels * per_group)), max(1, spec.macs // max(spec.params, 1)),
                   spec.weight_tensors)

    def numel(self, out_channels: int, in_channels: int) -> int:
        """Weight elements at the given widths."""
        per_group = 1 if self.depthwise else max(1, in_channels // self.groups)
        return out_channels * per_group * self.kernel_area

    def bytes_upper(self, out_channels: int, in_channels: int, choice: LayerChoice) -> int:
        """Upper bound of the payload of the layer's weights at the given widths under ``choice``.

        A layer of several weight tensors (an LSTM's) is bounded tensor by tensor, each scaled like the whole.
        """
        numel = self.numel(out_channels, in_channels)
        if len(self.tensors) <= 1:
            parts = [(numel, out_channels)]
        else:
            scale = numel / max(self.numel(self.out_channels, self.in_channels), 1)
            parts = [(math.ceil(elements * scale), rows) for elements, rows in self.tensors]
        return sum(
            weight_bytes_upper(n, rows, n - pruned_count(n, choice.sparsity), choice.bits, quantizer=choice.quantizer)
            for n, rows in parts
        )


@dataclass(frozen=True, eq=False)
class CostModel:
    """Size upper bound, MACs and predicted latency of a policy over one network."""

    layers: tuple[LayerShape, ...]
    """Compressible layers in episode order."""
    rest_bytes: int
    """File prefix + header allowance + every raw (non-encoded) tensor at full width."""
    group_channels: tuple[int, ...] = ()
    """Channels of each channel group."""
    group_leaders: tuple[int, ...] = ()
    """Layer index of each group's leader (its keep ratio applies to the group)."""
    out_coupling: tuple[tuple[float, ...], ...] = ()
    """Per layer, output channels removed per channel removed from each group."""
    in_coupling: tuple[tuple[float, ...], ...] = ()
    """Per layer, input channels removed per channel removed from each group."""
    raw_coupling: tuple[float, ...] = ()
    """Per group, raw-tensor bytes (biases, BatchNorm) removed per channel removed."""
    payload: Callable[[int, LayerChoice], int] | None = None
    """Measured payload bytes of layer ``i``'s weight while its shape is unchanged
    (see :class:`~methods.packed_size.Payload`)."""
    channel_multiple: int = 1
    """Kept channel counts are rounded to this multiple (the device's)."""
    latency: LatencyCurve | None = None
    """Latency prediction (``None``: latency not modelled, reported as 0)."""
    latencies: tuple[tuple[str, LatencyCurve], ...] = ()
    """Latency prediction of each runtime, when the runtime is searched (``latency`` is then the first's)."""
    group_units: tuple[int, ...] = ()
    """Channels each group removes together (:attr:`methods.structured.ChannelGroup.unit`); empty: one each."""

    def on(self, runtime: str) -> CostModel:
        """This model predicting latency on ``runtime`` (itself when it has no per-runtime curves).

        Raises:
            KeyError: for a runtime it has no curve of.
        """
        if not self.latencies:
            return self
        return replace(self, latency=dict(self.latencies)[runtime])

    def costs(self, choices: Sequence[LayerChoice]) -> Costs:
        """Modelled costs of one choice per layer (episode order)."""
        units = self.group_units or (1,) * len(self.group_channels)
        removed = [c - kept_channels(c, choices[leader].keep, self.channel_multiple, unit)
                   for c, leader, unit in zip(self.group_channels, self.group_leaders, units, strict=True)]
        size, macs = self.rest_bytes, 0
        if self.raw_coupling:
            size -= math.floor(sum(b * r for b, r in zip(self.raw_coupling, removed, strict=True)) + 1e-9)
        for i, (shape, choice) in enumerate(zip(self.layers, choices, strict=True)):
            out, inn = shape.out_channels, shape.in_channels
            if removed:
                out -= math.floor(sum(o * r for o, r in zip(self.out_coupling[i], removed, strict=True)) + 1e-9)
                inn -= math.floor(sum(c * r for c, r in zip(self.in_coupling[i], removed, strict=True)) + 1e-9)
            numel = shape.numel(out, inn)
            if self.payload is not None and out == shape.out_channels and inn == shape.in_channels:
                size += self.payload(i, choice)
            else:
                size += shape.bytes_upper(out, inn, choice)
            macs += numel * shape.positions
        latency = 0.0 if self.latency is None else self.latency.predict(macs)
        return Costs(size_bytes=int(size), latency_ms=latency, macs=int(macs))


def clamp_levels(
    proposed: np.ndarray, movable: np.ndarray, fits: Callable[[np.ndarray], bool], resolution: int = WALL_RESOLUTION
) -> np.ndarray:
    """Moves ``proposed`` compression levels (0 = none, 1 = most) toward 1 on the ``movable`` dims.

    Returns the first point of the path ``proposed + lam * (1 - proposed)``, ``lam`` on a grid of
    ``resolution`` steps, at which ``fits`` holds (bisection: ``fits`` must be monotone along the
    path); the end of the path (most compressed) when nothing fits.
    """
    proposed = np.asarray(proposed, dtype=np.float64)

    def at(step: int) -> np.ndarray:
        levels = proposed.copy()
        fraction = step / resolution
        levels[movable] = 1.0 if step == resolution else proposed[movable] + fraction * (1.0 - proposed[movable])
        return levels

    if fits(at(0)) or not movable.any():
        return at(0)
    low, high = 0, resolution
    if not fits(at(high)):
        return at(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(at(middle)) else (middle, high)
    return at(high)


def apply_wall(
    levels: np.ndarray,
    index: int,
    prefix: Sequence[LayerChoice],
    decode: Callable[[np.ndarray], LayerChoice],
    most: Sequence[LayerChoice],
    model: CostModel,
    limits: Limits,
    speed_dims: np.ndarray,
) -> np.ndarray:
    """AMC's action wall for layer ``index``: the least extra compression that keeps the episode feasible.

    Args:
        levels: the agent's compression levels for this layer, in [0, 1].
        index: the layer's position in the episode.
        prefix: choices already made for layers ``0 .. index - 1``.
        decode: maps levels of this layer to its choice (pure).
        most: the most compressed choice of every layer.
        model: the cost model.
        limits: the episode's limits.
        speed_dims: action dims that change latency/MACs (the keep ratio of a leader); moved first,
            alone, so that a latency or MACs limit does not also force sparsity or bits.
    """
    if limits.empty:
        return np.asarray(levels, dtype=np.float64)

    def fits(limit: Limits) -> Callable[[np.ndarray], bool]:
        return lambda lv: model.costs([*prefix, decode(lv), *most[index + 1 :]]).fits(limit)

    speed = limits.speed_only
    if not speed.empty and speed_dims.any():
        levels = clamp_levels(levels, speed_dims, fits(speed))
    return clamp_levels(levels, np.ones(len(levels), dtype=bool), fits(limits))
