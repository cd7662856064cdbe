"""What ``--task FILE.py:factory`` returns: a model with its own data, metric and loss.

``TaskDefinition`` is the whole task protocol. Only ``model``, ``train``, ``val`` and ``test`` are required:

* data: ``DataLoader`` s, map-style datasets (``TensorDataset`` s too) or ``IterableDataset`` s of ``(input,
  target)`` samples; small map-style datasets are held in memory, everything else is streamed batch by batch
  (:mod:`methods.streams`); ``collate`` and ``to_device`` read samples of any other structure;
* ``metric``: a name in :data:`methods.objective.METRICS`, or your own :class:`methods.objective.Metric` (a
  name, a direction and a batch's ``(sum, count)``), default by the targets' dtype;
* ``loss``: ``loss(outputs, targets) -> scalar tensor`` for training and every fine-tune, default cross-entropy
  over the last dim (integer targets) or mean squared error (float targets);
* ``trained``: whether ``model`` holds trained weights (else it is trained with ``recipe`` and cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UsageError
from core.metric import MetricSpec
from envs.tasks.training import TrainRecipe
from methods.objective import METRICS, Metric
from methods.streams import Collate, ToDevice

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets) -> scalar tensor``."""


@dataclass
class TaskDefinition:
    """A model and everything needed to train, score and compress it (see the module docstring)."""

    model: nn.Module
    """The model (trained, unless ``trained`` is False)."""
    train: object
    """Training data: a ``DataLoader`` or a dataset (an ``IterableDataset`` needs ``__len__``)."""
    val: object
    """Validation data: the search scores candidates on a fixed, seeded subset of it (``evaluator.val_samples``)."""
    test: object
    """Test data: only the exported models are scored on it, on all of it."""
    metric: str | Metric | None = None
    """A registered metric's name, your own :class:`~methods.objective.Metric`, or None (by the targets)."""
    loss: Loss | None = None
    """Training and fine-tuning loss; None: cross-entropy (integer targets) or mean squared error (float)."""
    trained: bool = True
    """Whether ``model`` is trained; if not, it is trained with ``recipe`` on ``train`` (and cached)."""
    recipe: TrainRecipe | None = None
    """How to train it when it is not (default: the user recipe)."""
    collate: Collate | None = None
    """Builds a batch from a list of samples of a dataset (default: torch's ``default_collate``); a
    ``DataLoader`` uses its own."""
    to_device: ToDevice | None = None
    """``to_device(batch, device) -> (inputs, targets)``: unpacks a batch of any structure onto a device
    (default: a batch is an ``(inputs, targets)`` pair)."""


def checked_definition(value: object, where: str) -> TaskDefinition:
    """``value`` when it is a usable :class:`TaskDefinition`.

    Raises:
        UsageError: one line naming what is wrong: not a TaskDefinition, not a model, a metric without a name
            or direction, a loss that is not callable, a recipe of the wrong type.
    """
    if not isinstance(value, TaskDefinition):
        raise UsageError(f"{where} returned {type(value).__name__}; it must return envs.tasks.TaskDefinition("
                         "model=..., train=..., val=..., test=...)")
    if not isinstance(value.model, nn.Module):
        raise UsageError(f"{where}: model is a {type(value.model).__name__}, not a torch.nn.Module")
    metric = value.metric
    if isinstance(metric, str):
        if metric not in METRICS.names():
            raise UsageError(f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS.names())} "
                             "or give a methods.objective.Metric")
    elif metric is not None:
        spec = getattr(metric, "spec", None)
        if not isinstance(metric, Metric) or not isinstance(spec, MetricSpec):
            raise UsageError(f"{where}: metric is a {type(metric).__name__}; give a metric name or a "
                             "methods.objective.Metric with a spec = MetricSpec(name, higher_is_better)")
        if not spec.name.isidentifier() or not isinstance(spec.higher_is_better, bool):
            raise UsageError(f"{where}: metric {spec.name!r} needs an identifier name and a direction "
                             "(MetricSpec(name, higher_is_better=True or False))")
    if value.loss is not None and not callable(value.loss):
        raise UsageError(f"{where}: loss is a {type(value.loss).__name__}; give loss(outputs, targets) -> tensor")
    for hook in ("collate", "to_device"):
        if getattr(value, hook) is not None and not callable(getattr(value, hook)):
            raise UsageError(f"{where}: {hook} is a {type(getattr(value, hook)).__name__}, not a function")
    if value.recipe is not None and not isinstance(value.recipe, TrainRecipe):
        raise UsageError(f"{where}: recipe is a {type(value.recipe).__name__}; give an envs.tasks.TrainRecipe")
    return value
