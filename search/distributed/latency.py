"""Latency measured on the node that holds the device: an actor pinned by the device's custom resource."""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Sequence
from typing import Any

import ray
from ray import cloudpickle
from torch import nn

from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.timing import Latency, measure

RESOURCE_SHARE = 0.01
"""Amount of the device's custom resource the latency meter holds (so many runs can share a device node)."""
TIMEOUT_S = 900.0
"""Longest wait for one latency measurement (e.g. while the device's node is down) before the caller fails."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class LatencyMeter:
    """Times models on a node holding the device's custom resource, one model at a time.

    A long-lived actor rather than a task per measurement: no worker process (and torch import)
    is started per candidate, and measurements never overlap on the device. It reserves no CPU,
    so a trial waiting for it can never starve it; if its node dies it is restarted on another
    node with the resource, and the pending measurement is retried.
    """

    def measure(self, model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> tuple[Latency, str]:
        """Latency (and spread) of ``model`` on ``device``, and this node's Ray id."""
        return measure(model, input_shape, device), ray.get_runtime_context().get_node_id()


def start_meter(device: DeviceProfile) -> Any:
    """A :class:`LatencyMeter` on a node with ``device.ray_resource`` (``None`` for a device without one)."""
    if device.ray_resource is None:
        return None
    # "DEFAULT": outside the calling trial's placement group, so it can live on another node.
    return LatencyMeter.options(resources={device.ray_resource: RESOURCE_SHARE}, scheduling_strategy="DEFAULT").remote()


def ship_model_code(model: nn.Module) -> None:
    """Pickles the classes of ``model`` by value when other processes could not import their module.

    A ``--model FILE.py:factory`` is loaded under a private module name that Ray workers cannot
    import; registered by value, its code travels with the model.
    """
    for name in sorted({type(m).__module__ for m in model.modules()}):
        top = name.split(".")[0]
        if name in sys.modules and top not in sys.builtin_module_names and name != "__main__" \
                and importlib.machinery.PathFinder.find_spec(top) is None:
            cloudpickle.register_pickle_by_value(sys.modules[name])


class RemoteLatencyEvaluator(Evaluator):
    """An :class:`Evaluator` whose latencies come from the device's node; everything else runs locally."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        ship_model_code(self.task.model)
        self._meter: Any = None
        self.last_latency_node = ""
        """Ray node id that measured the latency returned last."""

    def start_meter(self) -> None:
        """Starts the device's latency meter once; call it before shipping the evaluator, so trials share it."""
        if self._meter is None:
            self._meter = start_meter(self.device)

    def timing_text(self) -> str:
        """Where latencies are measured."""
        if self.device.ray_resource is None:
            return "timed in the Ray trial's process"
        return f"timed by the device's latency meter (a Ray actor on a node with resource {self.device.ray_resource!r})"

    def measure_model(
        self, model: nn.Module, runnable: nn.Module | None = None, runtime: str | None = None
    ) -> Latency:
        """On the device's node (its latency meter is already a long-lived process of its own)."""
        return self.measure_on_device(runnable or self.runnable(model, runtime), runtime)

    def fresh_latency(self, model: nn.Module, runtime: str | None = None) -> Latency:
        """On the device's node, as every latency of a sweep."""
        return self.measure_model(model, runtime=runtime)

    def measure_on_device(self, runnable: nn.Module, runtime: str | None = None) -> Latency:
        """Latency measured on a node that holds the device's Ray resource (this process without one)."""
        device = self.device_for(runtime)
        if self.device.ray_resource is None:
            latency = measure(runnable, self.task.input_shape, device)
            self.last_latency_node = ray.get_runtime_context().get_node_id()
            return latency
        self.start_meter()
        latency, self.last_latency_node = ray.get(
            self._meter.measure.remote(runnable, tuple(self.task.input_shape), device), timeout=TIMEOUT_S
        )
        return latency
