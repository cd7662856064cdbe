"""Conservative cost models of a policy, and AMC's action wall that keeps every episode within budget.

:func:`apply_wall` is pure: for layer ``t`` it moves the agent's action toward more compression
just far enough that the layers after ``t``, at their most compressed, can still meet every limit
under a :class:`CostModel`. By induction the finished policy meets the limits under the model.

* Size is an upper bound of the real packed file (tested against real files). A layer whose shape
  is unchanged is measured exactly, once per choice, by packing its weight alone as the pipeline
  does (with a per-candidate fine-tune the codes change, so then only its index is exact and codes
  count at fixed width). A channel-pruned layer counts the smaller of a bitmask and a worst-case
  relative index, fixed-width codes and its scales. Raw tensors (biases, BatchNorm) shrink with
  the removed channels; the header gets an allowance measured on real files plus slack.
* Latency is a prediction, not a guarantee: eager fp32 latency depends only on the kept channels,
  so a monotone curve over MACs is calibrated by timing uniformly pruned models and inflated by a
  safety margin.
* MACs (dense count, AMC's FLOPs budget) are exact.
"""

from __future__ import annotations

import copy
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.policy import FP32_BITS, LayerChoice, Policy
from core.spec import LayerSpec
from methods.discovery import discover_layers, total_macs
from methods.finetune import QUANTIZERS
from methods.packing import MAX_RELATIVE_K, MIN_RELATIVE_K, WeightEncoding, pack
from methods.pipeline import Refinement
from methods.pruning import magnitude_mask, pruned_count
from methods.structured import kept_channels, prune_channels

HEADER_SLACK = 1.1
"""Factor on the largest header measured on the calibration files."""
HEADER_SLACK_PER_TENSOR = 16
"""Extra header bytes allowed per tensor (digits of offsets, counts and lengths)."""
WALL_RESOLUTION = 64
"""Steps of the path from the agent's action to the most compressed action."""


def index_bytes_upper(numel: int, kept: int) -> int:
    """Upper bound of the sparse index bytes: min(bitmask, relative index with every gap worst-case)."""
    if kept >= numel:
        return 0
    bitmask = (numel + 7) // 8
    best = bitmask
    if 2 * kept < 8 * bitmask:
        for k in range(MIN_RELATIVE_K, MAX_RELATIVE_K + 1):
            symbols = kept + (numel - kept) // (2**k - 1)  # sum(floor(gap / E)) <= floor(sum(gap) / E)
            best = min(best, (symbols * k + 7) // 8)
    return best


def weight_bytes_upper(
    numel: int, channels: int, kept: int, bits: int, index: int | None = None, quantizer: str = "linear"
) -> int:
    """Upper bound of one encoded weight's payload (``index`` = exact index bytes when known).

    Codes are counted fixed-width (the packer stores Huffman codes only when smaller); ``linear``
    adds fp16 lo/step per output channel, ``kmeans`` a float32 codebook of at most ``2**bits`` values.
    """
    index = index_bytes_upper(numel, kept) if index is None else index
    if bits == FP32_BITS:
        return index + 4 * kept
    table = 4 * min(2**bits, kept) if quantizer == "kmeans" else 4 * channels
    return index + table + (kept * bits + 7) // 8


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
class LatencyModel:
    """Monotone piecewise-linear latency over dense MACs, times ``1 + margin``."""

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
    def fit(cls, points: Sequence[tuple[int, float]], margin: float) -> LatencyModel:
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

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> LayerShape:
        """Shape of a discovered layer."""
        depthwise = spec.kind == "depthwise"
        per_group = 1 if depthwise else max(1, spec.in_channels // spec.groups)
        return cls(spec.out_channels, spec.in_channels, spec.groups, depthwise,
                   max(1, spec.params // (spec.out_channels * per_group)), max(1, spec.macs // max(spec.params, 1)))

    def numel(self, out_channels: int, in_channels: int) -> int:
        """Weight elements at the given widths."""
        per_group = 1 if self.depthwise else max(1, in_channels // self.groups)
        return out_channels * per_group * self.kernel_area


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
    """Measured payload bytes of layer ``i``'s weight while its shape is unchanged (see :class:`Payload`)."""
    channel_multiple: int = 1
    """Kept channel counts are rounded to this multiple (the device's)."""
    latency: LatencyModel | None = None
    """Latency prediction (``None``: latency not modelled, reported as 0)."""

    def costs(self, choices: Sequence[LayerChoice]) -> Costs:
        """Modelled costs of one choice per layer (episode order)."""
        removed = [c - kept_channels(c, choices[leader].keep, self.channel_multiple)
                   for c, leader in zip(self.group_channels, self.group_leaders, strict=True)]
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
                kept = numel - pruned_count(numel, choice.sparsity)
                size += weight_bytes_upper(numel, out, kept, choice.bits, quantizer=choice.quantizer)
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


def _raw_bytes(model, weights: set[str]) -> int:
    """Bytes of the tensors stored raw (everything but the compressible weights)."""
    return sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in weights)


def _coupling(evaluator, probe_keep: float) -> tuple[list[list[float]], list[list[float]], list[float]]:
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


def _segments(blob: bytes) -> dict[str, int]:
    """Payload bytes of every tensor of a packed file, from its header table."""
    header = json.loads(zlib.decompress(blob[8 : 8 + int.from_bytes(blob[4:8], "little")]))
    return {entry["name"]: sum(entry["lengths"]) for entry in header["tensors"]}


class Payload:
    """Payload bytes of a layer's weight at its original shape, measured on real packed bytes (memoized).

    With ``exact_codes`` the weight is packed alone exactly as the pipeline packs it, so the bytes are
    exact. A per-candidate fine-tune changes the codes but not the mask: then only the index is
    measured and the codes count fixed-width (an upper bound).
    """

    def __init__(self, weights: Sequence, exact_codes: bool = True):
        """Args: weights: each layer's weight tensor (episode order); exact_codes: see the class."""
        self._weights = list(weights)
        self._exact = exact_codes
        self._memo: dict[tuple, int] = {}

    def __call__(self, index: int, choice: LayerChoice) -> int:
        weight = self._weights[index]
        key = (index, choice) if self._exact else (index, choice.sparsity)
        if key not in self._memo:
            mask = magnitude_mask(weight, choice.sparsity)
            if self._exact:
                stored = weight * mask if not choice.quantized else QUANTIZERS[choice.quantizer](weight, mask,
                                                                                                 choice.bits)
                encoding = WeightEncoding(mask, choice.bits, choice.quantizer)
            else:  # fp32 values: payload = index + 4 bytes per kept weight
                stored, encoding = weight, WeightEncoding(mask, FP32_BITS)
            measured = _segments(pack({"w": stored}, {"w": encoding}, {}))["w"]
            self._memo[key] = measured if self._exact else measured - 4 * int(mask.sum())
        if self._exact:
            return self._memo[key]
        kept = weight.numel() - pruned_count(weight.numel(), choice.sparsity)
        return weight_bytes_upper(weight.numel(), weight.shape[0], kept, choice.bits, self._memo[key],
                                  choice.quantizer)


def calibrate(
    evaluator,
    probes: Sequence[Policy],
    keeps: Sequence[float] = (),
    latency_margin: float | None = 0.1,
    latency_points: Sequence[Sequence[float]] | None = None,
) -> CostModel:
    """Builds the cost model of ``evaluator``'s network from real packed files and timings.

    Args:
        evaluator: an :class:`envs.evaluator.Evaluator`.
        probes: policies packed to size the header (include the most compressed one).
        keeps: uniform keep ratios timed for the latency curve (empty: channels are not searched,
            and coupling is not measured).
        latency_margin: safety margin of the latency model (``None``: no latency model).
        latency_points: earlier ``(macs, ms)`` calibration to reuse instead of timing (e.g. on resume).
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
        headers.append(int.from_bytes(compressed.blob[4:8], "little"))
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
        rest_bytes=8 + allowance + raw,
        group_channels=tuple(g.channels for g in evaluator.groups) if coupled else (),
        group_leaders=tuple(index_of[g.leader] for g in evaluator.groups) if coupled else (),
        out_coupling=tuple(tuple(row) for row in out),
        in_coupling=tuple(tuple(row) for row in inn),
        raw_coupling=tuple(raw_coupling),
        payload=Payload(layer_weights, exact_codes=evaluator.settings.finetune_steps == 0),
        channel_multiple=evaluator.device.channel_multiple,
        latency=None if latency_margin is None or not points else LatencyModel.fit(points, latency_margin),
    )
