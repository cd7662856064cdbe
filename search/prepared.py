"""A run made ready to search: task loaded (or trained), evaluator built, budget checked; nothing written."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from core.errors import UsageError
from core.space import SearchSpace
from envs.device import DeviceProfile, load_device
from envs.evaluator import Evaluator
from envs.runtimes import RuntimeConversionError
from envs.tasks import Task, load_task
from search.config import SearchConfig
from search.drivers import driver_for
from search.reachability import LatencyReach, check_latency, check_size, noise_warning
from search.searchers.rl.rewards import check_metric


@dataclass
class Prepared:
    """A task, device, evaluator and search space, ready to search; nothing written yet."""

    config: SearchConfig
    """The run's configuration."""
    task: Task
    """What is compressed."""
    device: DeviceProfile
    """Where latency is measured."""
    evaluator: Evaluator
    """Measures candidates."""
    space: SearchSpace
    """Per-layer choices."""
    latency_reach: LatencyReach | None = None
    """Baseline and fastest reachable latency on the device, timed before the search (with a latency target)."""


def prepare(config: SearchConfig, progress: bool = False) -> Prepared:
    """Loads (or trains) the task and builds the evaluator its driver needs; checks that the budgets are reachable.

    Raises:
        UsageError: for bad input, including a size budget or latency target the search space cannot reach.
    """
    device = load_device(config.device)
    task = load_task(config.task, model=config.model, weights=config.weights, data=config.data, progress=progress,
                     metric=config.metric, compute=config.compute)
    if config.searcher == "rl":
        check_metric(task.metric_spec)  # before the run folder is written
    if config.export.finetune.rewind == "init" and task.initial is None:
        raise UsageError("export rewind: init needs the model's initial weights, which only a model this tool "
                         "trains has; drop --weights or use rewind: weights")
    evaluator = driver_for(config).evaluator_type()(task, device, config.evaluator, compute=config.compute)
    evaluator.learned.settings = config.export.learned_settings(config.seed)
    evaluator.learned.progress = progress
    evaluator.learned.keeps = config.space.keeps() if config.space.channel_pruning else ()
    if config.export.learned is not None:  # trained now: a model the method cannot train fails before any output
        evaluator.learned.base(config.export.learned)
        whole = evaluator.learned.inelastic(config.export.learned)
        if whole:
            print(f"warning: learned {config.export.learned!r}: the channel groups led by {', '.join(whole)} are "
                  "not elastic (layers the supernet cannot slice) and stay whole", file=sys.stderr)
        evaluator.learned_default = config.export.learned  # every candidate starts from it, searched and exported
    try:
        evaluator.runnable(task.model)
    except RuntimeConversionError as exc:
        raise UsageError(f"device {device.name!r}: {exc}; choose a device whose runtime is torch") from exc
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), config.space, tuple(evaluator.layers),
                        runtimes=usable_runtimes(evaluator))
    check_size(evaluator, space, config.budget)
    evaluator.latency_target_ms = config.budget.latency_ms
    reach = None
    if config.ray_address is None:  # on a cluster the device may be another machine: its nodes time candidates
        reach = check_latency(evaluator, space, config.budget)
    if reach is not None and config.budget.latency_ms is not None:
        warning = noise_warning(reach, config.budget.latency_ms)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
    return Prepared(config, task, device, evaluator, space, reach)


def usable_runtimes(evaluator: Evaluator) -> tuple[str, ...]:
    """The device's runtimes that can take the task's model, the default first; each other runtime that cannot
    is left out of the search with a warning on stderr."""
    device, usable = evaluator.device, [evaluator.device.runtime]
    for runtime in device.runtimes[1:]:
        try:
            evaluator.runnable(evaluator.task.model, runtime)
        except RuntimeConversionError as exc:
            print(f"warning: device {device.name!r}: runtime {runtime!r} left out of the search: {exc}",
                  file=sys.stderr)
        else:
            usable.append(runtime)
    return tuple(usable)
