"""The training loss and the metrics a task is scored by, over model outputs whose last dim holds class scores.

One loss serves classifiers, sequence models and regressors alike, chosen by the targets' dtype:

* integer targets: cross-entropy over the last dim of the outputs, averaged over every position (a classifier's
  ``(N, C)`` logits with ``(N,)`` labels, or a language model's ``(N, T, V)`` logits with ``(N, T)`` next tokens);
* float targets: mean squared error against outputs of the targets' shape.

Metrics (:data:`METRICS`) accumulate a sum and a count over batches, so a split's value does not depend on
the batch size. A new metric is one :class:`Metric` plus one ``METRICS.register`` line.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch.nn import functional as F

from core.metric import ACCURACY, MetricSpec
from core.registry import Registry


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the last dim for integer targets, mean squared error for float targets."""
    if targets.dtype.is_floating_point:
        return F.mse_loss(outputs, targets)
    return class_cross_entropy(outputs, targets)


def class_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class scores in the last dim against an integer target per position."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction=reduction)


def soft_target_loss(outputs: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s ``KL(teacher || student)`` on temperature-softened class scores (last dim), per position."""
    classes = outputs.shape[-1]
    return F.kl_div(
        F.log_softmax(outputs.reshape(-1, classes) / temperature, dim=1),
        F.log_softmax(teacher.reshape(-1, classes) / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def mimic_loss(outputs: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Ba and Caruana's mimic loss: half the squared L2 distance between the student's and the teacher's logits
    (last dim), averaged over positions; no softmax, no temperature (it regresses the logits themselves)."""
    return 0.5 * (outputs - teacher).pow(2).sum(-1).mean()


class Metric(ABC):
    """A metric over a split, accumulated batch by batch (register an instance in :data:`METRICS`)."""

    spec: ClassVar[MetricSpec]
    """Name and direction."""
    float_targets: ClassVar[bool] = False
    """Whether it scores float targets (regression) rather than integer class labels."""

    @abstractmethod
    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """``(sum, count)`` of one batch; the split's value is the sums' total over the counts' total."""


class Accuracy(Metric):
    """Fraction of positions whose arg-max class score equals the target."""

    spec = ACCURACY

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Correct positions and positions."""
        return float((outputs.argmax(dim=-1) == targets).sum()), int(targets.numel())


class BitsPerCharacter(Metric):
    """Mean cross-entropy of the next character in bits (a character-level language model's metric)."""

    spec = MetricSpec("bpc", False, "bits per character")

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Summed cross-entropy in bits and characters."""
        total = class_cross_entropy(outputs.float(), targets, reduction="sum")
        return float(total) / math.log(2.0), int(targets.numel())


class MeanSquaredError(Metric):
    """Mean squared error of float outputs against float targets of the same shape."""

    spec = MetricSpec("mse", False, "mean squared error")
    float_targets = True

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Summed squared error and elements."""
        return float(F.mse_loss(outputs.float(), targets.float(), reduction="sum")), int(targets.numel())


METRICS: Registry[Metric] = Registry("metric")
"""Task metrics by name (``MetricSpec.name``)."""
METRICS.register("accuracy", Accuracy())
METRICS.register("bpc", BitsPerCharacter())
METRICS.register("mse", MeanSquaredError())


def default_metric(targets: torch.Tensor) -> str:
    """``accuracy`` for integer targets, ``mse`` for float targets."""
    return "mse" if targets.dtype.is_floating_point else "accuracy"
