"""Latency filling: scale a proposed policy's channel widths so that it uses the latency budget.

A searcher that samples keep ratios freely mostly proposes networks well under (or over) the latency
target, and the target is then met with accuracy to spare or not at all. AMC bounds each action so that
the budget is met exactly; this is the same idea for every searcher: the proposal's keep ratios are
multiplied by one factor ``alpha`` (their proportions, and so the *shape* of the width profile, are
kept), snapped down to the keep grid and clipped to it, with ``alpha`` chosen by bisection as the
largest whose latency-model prediction is within ``fraction`` of the target. The searcher then learns
the shape; the budget sets the overall width.

A search exploits its latency model's errors: among networks predicted equally fast it keeps the most
accurate, which are disproportionately those the model under-predicts. So the chosen width is then run
for real: while it is over the aim it is narrowed in proportion and run again, and the ratio of measured
to predicted latency, over the recent candidates, corrects the aim of the next bisections.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from torch import nn

from core.budget import Budget
from core.policy import Policy
from core.space import SearchSpace
from envs.evaluator import Evaluator
from envs.timing import Latency
from methods.pipeline import architecture

BISECTION_STEPS = 10
"""Latency-model probes per proposal (on ``log alpha``)."""
VERIFY_RUNS = 3
"""Real runs per proposal, at most (each over the aim narrows the widths in proportion)."""
CALIBRATION_WINDOW = 15
"""Recent measured/predicted ratios whose median corrects the latency model."""


class LatencyFill:
    """Scales policies' keep ratios together to the widest within a fraction of a latency target.

    Args:
        space: the search space (its keep grid and leaders).
        target_ms: the latency target in milliseconds.
        fraction: fill up to ``fraction * target_ms``.
        latency_of: predicted latency in milliseconds of a model.
        architecture_of: the model a policy gives (only its layer shapes matter).
        measure_of: measured latency of a model on the device; ``None`` trusts the prediction.
        on_measured: called with each measured model, its prediction and its measurement.
    """

    def __init__(
        self,
        space: SearchSpace,
        target_ms: float,
        fraction: float,
        latency_of: Callable[[nn.Module], float],
        architecture_of: Callable[[Policy], nn.Module],
        measure_of: Callable[[nn.Module], float] | None = None,
        on_measured: Callable[[nn.Module, float, float], None] | None = None,
    ):
        self.space = space
        self.aim_ms = fraction * target_ms
        self.latency_of = latency_of
        self.architecture_of = architecture_of
        self.measure_of = measure_of
        self.on_measured = on_measured
        self.ratios: list[float] = []
        """Measured over predicted latency of every verified candidate, in order."""
        self._predicted: dict[tuple[float, ...], float] = {}

    @classmethod
    def for_evaluator(
        cls, evaluator: Evaluator, space: SearchSpace, target_ms: float, fraction: float, runtime: str | None = None
    ) -> LatencyFill:
        """The filler of an evaluator's task and device running ``runtime`` (``None``: the default): predicts with
        that runtime's latency model, verifies on the device, and hands each real run to the evaluator (the
        candidate's latency, and a model check)."""
        task = evaluator.task

        def architecture_of(policy: Policy) -> nn.Module:
            return architecture(task.model, policy, task.input_shape, evaluator.device.channel_multiple)

        runs: dict[int, Latency] = {}

        def measure_of(model: nn.Module) -> float:
            runs[id(model)] = evaluator.measure_model(model, runtime=runtime)
            return runs[id(model)].ms

        def on_measured(model: nn.Module, predicted_ms: float, measured_ms: float) -> None:
            evaluator.remember_latency(model, predicted_ms, runs.pop(id(model)), runtime)

        predictor = evaluator.predictor_for(runtime)
        return cls(space, target_ms, fraction, predictor, architecture_of, measure_of, on_measured)

    @property
    def correction(self) -> float:
        """Median measured/predicted ratio of the recent candidates (1 before any)."""
        return statistics.median(self.ratios[-CALIBRATION_WINDOW:]) if self.ratios else 1.0

    def _scaled(self, policy: Policy, alpha: float) -> Policy:
        return self.space.scaled_keeps(policy, alpha)

    def _latency(self, policy: Policy) -> float:
        widths = tuple(policy[name].keep for name in self.space.leaders) + tuple(c.rank for _, c in policy)
        if widths not in self._predicted:
            self._predicted[widths] = self.latency_of(self.architecture_of(policy))
        return self._predicted[widths]

    def _bisect(self, policy: Policy, low: float, high: float, aim: float) -> float:
        """The largest ``log alpha`` in ``[low, high]`` predicted within ``aim`` (``low`` if none)."""
        if self._latency(self._scaled(policy, math.exp(high))) <= aim:
            return high
        for _ in range(BISECTION_STEPS):
            mid = (low + high) / 2
            if self._latency(self._scaled(policy, math.exp(mid))) <= aim:
                low = mid
            else:
                high = mid
        return low

    def __call__(self, policy: Policy) -> Policy:
        """``policy`` with its keep ratios scaled to fill the target (the narrowest grid point if none fits)."""
        keeps = [policy[name].keep for name in self.space.leaders]
        if not keeps:
            return policy
        low = math.log(self.space.keep_grid()[0] / max(keeps))
        log_alpha = self._bisect(policy, low, math.log(1.0 / min(keeps)), self.aim_ms / self.correction)
        filled = self._scaled(policy, math.exp(log_alpha))
        if self.measure_of is None:
            return filled
        for run in range(VERIFY_RUNS):
            model = self.architecture_of(filled)
            predicted, measured = self._latency(filled), self.measure_of(model)
            self.ratios.append(measured / predicted)
            if self.on_measured is not None:
                self.on_measured(model, predicted, measured)
            if measured <= self.aim_ms or log_alpha <= low or run == VERIFY_RUNS - 1:
                break
            narrower = max(low, log_alpha + math.log(self.aim_ms / measured))
            while narrower > low and self._scaled(policy, math.exp(narrower)) == filled:
                narrower = max(low, narrower - math.log(1.0 + self.space.settings.keep_step))
            log_alpha, filled = narrower, self._scaled(policy, math.exp(narrower))
        return filled


class RuntimeFills:
    """One :class:`LatencyFill` per runtime, made on first use: a policy's widths fill the target under its own
    runtime's latency model and measurements (and its own correction)."""

    def __init__(self, evaluator: Evaluator, make: Callable[[str], LatencyFill]):
        self.evaluator = evaluator
        self.make = make
        self.fills: dict[str, LatencyFill] = {}
        """The fillers made so far, by runtime."""

    def __call__(self, policy: Policy) -> Policy:
        """``policy`` filled by its runtime's filler."""
        runtime = self.evaluator.device_for(policy.runtime).runtime
        if runtime not in self.fills:
            self.fills[runtime] = self.make(runtime)
        return self.fills[runtime](policy)


def latency_fill(
    evaluator: Evaluator, space: SearchSpace, budget: Budget
) -> LatencyFill | RuntimeFills | None:
    """The run's filler (one per runtime when the space searches the runtime), or ``None`` when
    ``space.latency_fill`` is 0, there is no latency target or no keep ratio."""
    fraction = space.settings.latency_fill
    target = budget.latency_ms
    if fraction <= 0 or target is None or not space.searches_keep:
        return None
    if space.searches_runtime:
        return RuntimeFills(evaluator, lambda runtime: LatencyFill.for_evaluator(evaluator, space, target, fraction,
                                                                                 runtime))
    return LatencyFill.for_evaluator(evaluator, space, target, fraction)
