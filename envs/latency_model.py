"""A per-device latency model: a lookup table of per-layer latencies plus a fitted end-to-end correction.

The table holds, per device profile, the measured latency of every Conv2d and Linear configuration it
has met (shape, kept channels, input size, precision), each timed alone at the profile's batch, threads,
warm-up and repeats, as the device's runtime says (:meth:`envs.runtimes.Runtime.timing_case`: e.g. on
``torch-int8`` the bare quantized kernel on an already quantized input), less the runtime's per-call cost
(:meth:`envs.runtimes.Runtime.call_cost_ms`: e.g. an identity session's time on ONNX Runtime), which a whole
network pays once, not once per layer. The table is stored as JSON under the cache directory and grows as
new shapes appear, so each configuration is profiled once per device.

A layer timed alone is not timed as it runs in the network (caches, thread start-up), and the table
does not cover BatchNorm, activations, residual adds, pooling or framework dispatch. Both are the
*correction*, modelled per architecture as

    latency(model) ~= a + s * sum of table[layer] + b * activations(model)

(``activations``: output elements of the Conv2d/Linear layers per sample), with ``a, s, b >= 0`` fitted
by non-negative least squares on real end-to-end runs of the architecture at a few widths: uniform
channel-keep ratios from full width down to very thin, and a few seeded non-uniform ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from core.spec import as_shape, shape_on
from envs.profile import DeviceProfile
from envs.timing import measure_latency, time_forward
from methods.discovery import trace_layers
from methods.layer_kinds import LayerKind, kind_of

TABLE_VERSION = 4
PROFILE_ROUNDS = 3
"""Every table entry and every fitting run is the fastest of this many medians (noise on a shared machine only
ever adds time, and an entry, once written, is used for every later prediction)."""
PRECISION = "fp32"
"""Precision of eager PyTorch layers; int8 runtimes key their entries ``int8``."""


@dataclass(frozen=True)
class LayerCall:
    """One call of a compressible layer (a registered kind: Conv2d, Linear, ...) in a forward pass."""

    key: str
    """Table key: layer type, configuration, input size and precision."""
    module: nn.Module
    """The layer itself (used only to build a stand-alone copy for timing)."""
    input_shape: tuple[int, ...]
    """Input of one sample, without the batch dimension."""
    activations: int
    """Output elements per sample."""


@dataclass(frozen=True)
class Overhead:
    """``a + s * layers_ms + b * activations`` milliseconds: the end-to-end latency from the table's layer sum."""

    intercept_ms: float
    """``a``: fixed cost per forward pass."""
    layer_scale: float
    """``s``: ratio of a layer's cost inside the network to its cost timed alone."""
    per_activation_ms: float
    """``b``: cost per output element of the Conv2d/Linear layers (one sample)."""

    def __call__(self, layers_ms: float, activations: int) -> float:
        return self.intercept_ms + self.layer_scale * layers_ms + self.per_activation_ms * activations


def _key(module: nn.Module, shape: tuple[int, ...], precision: str) -> str:
    parts = _kind(module).timing_config(module, shape)
    return ":".join(str(int(p) if isinstance(p, bool) else p) for p in parts) + f":{precision}"


def _kind(module: nn.Module) -> LayerKind:
    kind = kind_of(module)
    if kind is None:
        raise ValueError(f"{type(module).__name__} is not a registered compressible layer kind")
    return kind


def layer_calls(model: nn.Module, input_shape: Sequence[int], precision: str = PRECISION) -> list[LayerCall]:
    """The compressible-layer calls of one forward pass of ``model``, in execution order."""
    calls: list[LayerCall] = []

    def record(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> None:
        shape = _kind(module).sample_shape(module, inp)
        calls.append(LayerCall(_key(module, shape, precision), module, shape, int(out[0].numel())))

    trace_layers(model, input_shape, record)
    return calls


def _fresh_layer(module: nn.Module) -> nn.Module:
    """A plain layer of the same configuration as ``module``, outside its model (its kind's ``standalone``)."""
    return _kind(module).standalone(module)


def profile_digest(device: DeviceProfile) -> str:
    """Hash of everything in a profile that changes timings (its name and description excluded, and the other
    runtimes it allows: a table holds one runtime's timings, :attr:`DeviceProfile.runtime`'s)."""
    data = asdict(device)
    for name in ("name", "description", "ray_resource", "runtimes"):
        data.pop(name)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


def architecture_digest(calls: Sequence[LayerCall]) -> str:
    """Hash of an architecture's layer sequence (the key of its fitted overhead)."""
    return hashlib.sha256("|".join(c.key for c in calls).encode()).hexdigest()[:16]


class LatencyTable:
    """Per-device table of layer latencies and per-architecture overheads, persisted as JSON.

    Args:
        device: the profile whose timings the table holds.
        path: the JSON file (created on :meth:`save`; read if it exists and matches the profile).
    """

    def __init__(self, device: DeviceProfile, path: Path):
        self.device = device
        self.path = Path(path)
        self.layers: dict[str, float] = {}
        self.overheads: dict[str, Overhead] = {}
        self.measured_layers = 0
        """Layer configurations profiled by this instance (not read from the file)."""
        self._call_costs: dict[tuple[object, ...], float] = {}
        """The runtime's per-call cost by input shape (timed once per shape)."""
        self.runtime = device.engine
        """The device's runtime, which says how a layer is timed."""
        self.precision = "int8" if self.runtime.int8 else PRECISION
        """Precision of the layers as the device runs them."""
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("version") == TABLE_VERSION and data.get("profile") == profile_digest(device):
                self.layers = {str(k): float(v) for k, v in data.get("layers", {}).items()}
                self.overheads = {str(k): Overhead(*map(float, v)) for k, v in data.get("overheads", {}).items()}

    @classmethod
    def for_device(cls, device: DeviceProfile, cache_dir: Path) -> LatencyTable:
        """The device's table in ``cache_dir/latency/``."""
        return cls(device, Path(cache_dir) / "latency" / f"{device.name}-{profile_digest(device)}.json")

    def layer_ms(self, call: LayerCall) -> float:
        """The table entry of one layer call, profiling it first if it is new."""
        if call.key not in self.layers:
            example = _kind(call.module).timing_input(
                call.module, call.input_shape, self.device.batch, torch.Generator().manual_seed(0)
            )
            layer, timed_input = self.runtime.timing_case(_fresh_layer(call.module), example, self.device.threads)
            self.layers[call.key] = max(0.0, self._time(layer, timed_input) - self._call_cost(example))
            self.measured_layers += 1
        return self.layers[call.key]

    def _time(self, module: nn.Module, example: torch.Tensor) -> float:
        """The fastest of :data:`PROFILE_ROUNDS` median timings of ``module(example)`` on the device."""
        return min(time_forward(module, example, self.device) for _ in range(PROFILE_ROUNDS))

    def _call_cost(self, example: torch.Tensor) -> float:
        """The runtime's per-call cost on inputs of ``example``'s shape and dtype, timed once per shape and dtype."""
        key = (*example.shape, str(example.dtype))
        if key not in self._call_costs:
            self._call_costs[key] = self.runtime.call_cost_ms(example, self.device.threads, self._time)
        return self._call_costs[key]

    def layers_ms(self, calls: Sequence[LayerCall]) -> float:
        """Sum of the table entries of ``calls``."""
        return sum(self.layer_ms(call) for call in calls)

    def fit_overhead(
        self,
        models: Sequence[nn.Module],
        input_shape: Sequence[int],
        runnable: Callable[[nn.Module], nn.Module] = lambda model: model,
    ) -> Overhead:
        """Fits ``a + b * activations`` to real end-to-end measurements of ``models`` (the same architecture
        at different widths; the first one names it) and stores it.

        Args:
            models: the architecture at a few widths.
            input_shape: one sample's shape.
            runnable: what the device runs for a model (e.g. its int8 conversion).
        """
        rows, measured = [], []
        for model in models:
            calls = layer_calls(model, input_shape, self.precision)
            device_model = runnable(model)
            measured.append(min(measure_latency(device_model, input_shape, self.device) for _ in range(PROFILE_ROUNDS)))
            rows.append((1.0, self.layers_ms(calls), float(sum(c.activations for c in calls))))
        overhead = Overhead(*fit_nonnegative(np.array(rows), np.array(measured)))
        self.overheads[architecture_digest(layer_calls(models[0], input_shape, self.precision))] = overhead
        return overhead

    def predict(self, model: nn.Module, input_shape: Sequence[int], overhead: Overhead) -> float:
        """Predicted latency in milliseconds of ``model`` on the table's device."""
        calls = layer_calls(model, input_shape, self.precision)
        return overhead(self.layers_ms(calls), sum(c.activations for c in calls))

    def save(self) -> None:
        """Writes the table atomically (a reader never sees half a file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": TABLE_VERSION,
            "profile": profile_digest(self.device),
            "device": self.device.name,
            "layers": self.layers,
            "overheads": {k: list(astuple(v)) for k, v in self.overheads.items()},
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        tmp.replace(self.path)


def fit_nonnegative(x: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    """Least-squares coefficients of ``y ~ x`` constrained to be non-negative (a negative cost is not physical).

    Columns are scaled to unit norm before solving so that milliseconds and element counts weigh alike.
    """
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    coefficients, _ = nnls(x / norms, y)
    return tuple(float(c) for c in coefficients / norms)


class LatencyPredictor:
    """Predicts one architecture's latency on one device from a :class:`LatencyTable` and its overhead."""

    def __init__(self, table: LatencyTable, overhead: Overhead, input_shape: Sequence[int]):
        self.table = table
        self.overhead = overhead
        self.input_shape = as_shape(input_shape)

    def __call__(self, model: nn.Module) -> float:
        """Predicted latency in milliseconds; layers not yet in the table are profiled and saved."""
        before = self.table.measured_layers
        latency = self.table.predict(model, self.input_shape, self.overhead)
        if self.table.measured_layers != before:
            self.table.save()
        return latency


def fit_widths(
    leaders: Sequence[str], keeps: Sequence[float], mixed: int, seed: int = 0
) -> list[dict[str, float]]:
    """Keep ratios per channel-group leader at which an architecture's correction is fitted.

    One uniform setting per entry of ``keeps``, then ``mixed`` seeded settings drawn per leader between
    the smallest and the largest of ``keeps`` (searched widths are rarely uniform).
    """
    if not leaders:
        return [{}]
    widths = [{leader: keep for leader in leaders} for keep in keeps]
    rng = random.Random(seed)
    low, high = min(keeps), max(keeps)
    widths += [{leader: rng.uniform(low, high) for leader in leaders} for _ in range(mixed)]
    return widths


def build_predictor(
    model: nn.Module,
    input_shape: Sequence[int],
    device: DeviceProfile,
    cache_dir: Path,
    leaders: Sequence[str] = (),
    channel_multiple: int = 1,
    keeps: Sequence[float] = (1.0, 0.75, 0.5, 0.35, 0.25, 0.125),
    mixed: int = 3,
    runnable: Callable[[nn.Module], nn.Module] = lambda model: model,
) -> LatencyPredictor:
    """The device's predictor for ``model``; fits the architecture's correction once (then cached).

    The correction is fitted on the model at the widths of :func:`fit_widths` (``keeps`` and ``mixed``
    for the channel groups led by ``leaders``), each measured end to end on the device as ``runnable``
    makes it.
    """
    from methods.structured import prune_channels  # local: structured pruning pulls in torch-pruning

    shape = shape_on(device.input_shape, input_shape)
    table = LatencyTable.for_device(device, cache_dir)
    overhead = table.overheads.get(architecture_digest(layer_calls(model, shape, table.precision)))
    if overhead is None:
        variants = []
        for widths in fit_widths(leaders, keeps, mixed):
            variant = copy.deepcopy(model).eval()
            prune_channels(variant, shape, widths, channel_multiple)
            variants.append(variant)
        overhead = table.fit_overhead(variants, shape, runnable)
    table.save()
    return LatencyPredictor(table, overhead, shape)
