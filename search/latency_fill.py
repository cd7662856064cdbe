"""Latency filling: scale a proposed policy's channel widths so that it uses the latency budget.

A searcher that samples keep ratios freely mostly proposes networks well under (or over) the latency
target, and the target is then met with accuracy to spare or not at all. AMC bounds each action so that
the budget is met exactly; this is the same idea for every searcher: the proposal's keep ratios are
multiplied by one factor ``alpha`` (their proportions, and so the *shape* of the width profile, are
kept), snapped down to the keep grid and clipped to it, with ``alpha`` chosen by bisection as the
largest whose latency-model prediction is within ``fraction`` of the target. The searcher then learns
the shape; the budget sets the overall width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from envs.evaluator import Evaluator
from methods.pipeline import architecture
from search.budget import Budget
from search.policy import Policy
from search.space import SearchSpace

BISECTION_STEPS = 10
"""Latency-model probes per proposal (on ``log alpha``)."""


class LatencyFill:
    """Scales policies' keep ratios together to the widest predicted within a fraction of a latency target.

    Args:
        space: the search space (its keep grid and leaders).
        target_ms: the latency target in milliseconds.
        fraction: fill up to ``fraction * target_ms`` of predicted latency.
        latency_of: predicted latency in milliseconds of a model.
        architecture_of: the model a policy gives (only its layer shapes matter).
    """

    def __init__(
        self,
        space: SearchSpace,
        target_ms: float,
        fraction: float,
        latency_of: Callable[[nn.Module], float],
        architecture_of: Callable[[Policy], nn.Module],
    ):
        self.space = space
        self.aim_ms = fraction * target_ms
        self.latency_of = latency_of
        self.architecture_of = architecture_of
        self._predicted: dict[tuple[float, ...], float] = {}

    @classmethod
    def for_evaluator(cls, evaluator: Evaluator, space: SearchSpace, target_ms: float, fraction: float) -> LatencyFill:
        """The filler of an evaluator's task and device, predicting with the device's latency model."""
        task = evaluator.task

        def architecture_of(policy: Policy) -> nn.Module:
            return architecture(task.model, policy, task.input_shape, evaluator.device.channel_multiple)

        return cls(space, target_ms, fraction, evaluator.predictor, architecture_of)

    def _scaled(self, policy: Policy, alpha: float) -> Policy:
        choices = policy.choices
        for name in self.space.leaders:
            choice = policy[name]
            choices[name] = replace(choice, keep=self.space.snap_keep(min(1.0, choice.keep * alpha)))
        return Policy.from_choices(choices, policy.saliency, policy.channel_importance)

    def _latency(self, policy: Policy) -> float:
        widths = tuple(policy[name].keep for name in self.space.leaders) + tuple(c.rank for _, c in policy)
        if widths not in self._predicted:
            self._predicted[widths] = self.latency_of(self.architecture_of(policy))
        return self._predicted[widths]

    def __call__(self, policy: Policy) -> Policy:
        """``policy`` with its keep ratios scaled to fill the target (the narrowest grid point if none fits)."""
        keeps = [policy[name].keep for name in self.space.leaders]
        if not keeps:
            return policy
        low_keep = self.space.keep_grid()[0]
        low, high = math.log(low_keep / max(keeps)), math.log(1.0 / min(keeps))
        if self._latency(self._scaled(policy, math.exp(high))) <= self.aim_ms:
            return self._scaled(policy, math.exp(high))
        for _ in range(BISECTION_STEPS):
            mid = (low + high) / 2
            if self._latency(self._scaled(policy, math.exp(mid))) <= self.aim_ms:
                low = mid
            else:
                high = mid
        return self._scaled(policy, math.exp(low))


def latency_fill(evaluator: Evaluator, space: SearchSpace, budget: Budget) -> LatencyFill | None:
    """The run's filler, or ``None`` when ``space.latency_fill`` is 0, there is no latency target or no keep ratio."""
    fraction = space.settings.latency_fill
    if fraction <= 0 or budget.latency_ms is None or not space.searches_keep:
        return None
    return LatencyFill.for_evaluator(evaluator, space, budget.latency_ms, fraction)
