"""Terminal rewards of the compression environment, selectable by name (no eval).

Every reward maps a successful, feasible :class:`~core.result.Result` into roughly ``[-1, 0]``
(higher is better), so that one penalty scale works for all of them: an infeasible result
scores ``-1 - excess`` and a failed one :data:`FAILED_REWARD`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import UsageError
from core.metric import MetricSpec
from core.result import Result

FAILED_REWARD = -2.0
"""Reward of a candidate whose evaluation raised."""
INFEASIBLE_BASE = -1.0
"""Reward of an infeasible candidate before its relative budget excess is subtracted."""


@dataclass(frozen=True)
class Reference:
    """What a reward may compare against: the uncompressed model."""

    accuracy: float = 1.0
    """Validation score of the uncompressed model (its accuracy, or minus a lower-is-better metric; 1.0 when
    unknown)."""
    macs: int = 0
    """MACs per sample of the uncompressed model (0 when unknown)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accuracy) and self.accuracy != 0.0) or self.macs < 0:
            raise ValueError("the reference score must be finite and non-zero, and macs >= 0")


def negative_error(result: Result, reference: Reference) -> float:
    """AMC's ``-error``: minus the top-1 validation error."""
    return -(1.0 - result.val_accuracy)


def error_log_macs(result: Result, reference: Reference) -> float:
    """AMC's ``-error * log(MACs)``, divided by ``log`` of the original MACs to stay in ``[-1, 0]``."""
    scale = math.log(reference.macs) if reference.macs > 1 else 1.0
    return -(1.0 - result.val_accuracy) * math.log(max(result.macs, 1)) / scale


def relative_accuracy(result: Result, reference: Reference) -> float:
    """Score relative to the original model's: ``(score - reference) / |reference|`` (0 = no loss; for accuracy,
    ``accuracy / reference - 1``, HAQ's reward up to scale)."""
    return (result.val_accuracy - reference.accuracy) / abs(reference.accuracy)


RewardFn = Callable[[Result, Reference], float]
REWARDS: dict[str, RewardFn] = {
    "error": negative_error,
    "error_log_macs": error_log_macs,
    "relative_accuracy": relative_accuracy,
}
"""Terminal rewards by name."""


def terminal_reward(name: str, result: Result, reference: Reference, excess: float) -> float:
    """The reward of a finished episode.

    Args:
        name: a key of :data:`REWARDS`.
        result: what the evaluator measured.
        reference: the uncompressed model.
        excess: summed relative budget excess (0 when the result is within every budget).
    """
    if not result.ok or not math.isfinite(result.val_accuracy):
        return FAILED_REWARD
    if excess > 0:
        return INFEASIBLE_BASE - excess
    return float(REWARDS[name](result, reference))


def check_reward(name: str) -> str:
    """Returns ``name`` if it is a known reward.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of: {', '.join(REWARDS)}")
    return name


def check_metric(metric: MetricSpec) -> None:
    """Refuses a task whose metric the rewards cannot use: they are built on accuracy (errors in ``[0, 1]``).

    Raises:
        UsageError: for a lower-is-better metric (bits per character, mean squared error, ...).
    """
    if not metric.higher_is_better:
        raise UsageError(f"the rl searcher's rewards are built on accuracy (errors in [0, 1]); the task is scored "
                         f"by {metric.name}, lower is better: use --searcher tpe, nsga2 or random")
