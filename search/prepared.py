"""A run made ready to search: task loaded (or trained), evaluator built, budget checked; nothing written."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UsageError
from core.space import SearchSpace
from envs.device import DeviceProfile, load_device
from envs.evaluator import Evaluator
from envs.runtimes import RuntimeConversionError
from envs.tasks import Task, load_task
from search.config import SearchConfig
from search.drivers import driver_for


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


def prepare(config: SearchConfig, progress: bool = False) -> Prepared:
    """Loads (or trains) the task and builds the evaluator its driver needs; checks that the size budget is reachable.

    Raises:
        UsageError: for bad input, including a size budget below what the methods can reach.
    """
    device = load_device(config.device)
    task = load_task(config.task, model=config.model, weights=config.weights, data=config.data, progress=progress)
    evaluator = driver_for(config).evaluator_type()(task, device, config.evaluator)
    try:
        evaluator.runnable(task.model)
    except RuntimeConversionError as exc:
        raise UsageError(f"device {device.name!r}: {exc}; choose a device whose runtime is torch") from exc
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), config.space, tuple(evaluator.layers))
    size_budget = config.budget.size_bytes
    if size_budget is not None:
        smallest = min(
            evaluator.compress(space.most_compressed(quantizer), evaluator.refinement()).size_bytes
            for quantizer in config.space.quantizers
        )
        if size_budget < smallest:
            raise UsageError(
                f"size budget {size_budget} B is below the smallest file the search space can reach "
                f"({smallest} B); raise --budget-mb to at least {smallest / 1e6:.4f}"
            )
    return Prepared(config, task, device, evaluator, space)
