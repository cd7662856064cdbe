"""Budget repair: a proposal outside the budget is moved just inside it before it is evaluated.

A sampler that proposes per-layer choices freely spends many evaluations outside the budget where the
budget binds. This moves only those proposals, and only as far as needed, so the candidates that were
already inside keep the front's spread:

- **latency**: the proposal's architecture is timed on the device (the evaluator's own measurement, which
  the evaluation then reuses); while it is over the target, every channel-group keep ratio is scaled
  together (the width profile's shape is kept) toward the target and timed again;
- **size**: the packed bytes are estimated from each layer's exact payload at its original shape
  (``methods.packed_size.Payload``: masked and coded as the packer stores it), scaled by the fraction of its
  weights the architecture keeps, plus the other parameters at fp32; the estimate is corrected by the median
  ratio of real to estimated bytes over the candidates evaluated so far (header, fine-tuned codes). While it
  is over the budget, every layer's kept fraction is scaled together.

The searcher is told the result of the moved policy against its own proposal, as with latency filling: it
learns which shapes do well; the budget sets how far they are pushed. The RL agent bounds its own actions
(AMC's budget wall) and is not repaired.
"""

from __future__ import annotations

import math
import statistics

from torch import nn

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace
from envs.evaluator import Evaluator
from methods.layer_kinds import is_compressible, layer_weights, weight_keys
from methods.packed_size import Payload
from methods.pipeline import architecture

TRIES = 4
"""Most moves per proposal and budget."""
AIM = 0.97
"""A moved proposal aims at this fraction of the budget (timing and size estimates are not exact)."""
WINDOW = 15
"""Recent real/estimated size ratios whose median corrects the size estimate."""


class BudgetRepair:
    """Moves proposals outside the budget just inside it; see the module docstring.

    Args:
        evaluator: times architectures on the device and builds them.
        space: the search space (its keep and sparsity grids).
        budget: the run's budget.
    """

    def __init__(self, evaluator: Evaluator, space: SearchSpace, budget: Budget):
        self.evaluator = evaluator
        self.space = space
        self.budget = budget
        self.size_ratios: list[float] = []
        """Real packed bytes over the estimate, per evaluated candidate, in order."""
        self.moved = 0
        """Proposals moved so far."""
        self._shape_memo: dict[tuple[float, ...], tuple[list[tuple[str, int, int]], int]] = {}
        weights = [layer_weights(evaluator.task.model, name) for name in space.layers]
        self._payload = Payload(weights)
        self._index = {name: i for i, name in enumerate(space.layers)}
        self._numel = [sum(weight.numel() for weight in layer) for layer in weights]

    def __call__(self, policy: Policy) -> Policy:
        """``policy``, or the policy moved inside the budget (as far as the grids allow)."""
        repaired = policy
        if self.budget.latency_ms is not None and self.space.searches_keep:
            repaired = self._within_latency(repaired, self.budget.latency_ms)
        if self.budget.size_bytes is not None and self.size_ratios:
            repaired = self._within_size(repaired, self.budget.size_bytes)
        self.moved += repaired != policy
        return repaired

    def observe(self, policy: Policy, result: Result) -> None:
        """Learns the size estimate's error from an evaluated candidate."""
        if result.ok and result.size_bytes > 0:
            self.size_ratios.append(result.size_bytes / self.size_estimate(policy))

    def _architecture(self, policy: Policy) -> nn.Module:
        task = self.evaluator.task
        return architecture(task.model, policy, task.input_shape, self.evaluator.device.channel_multiple)

    def _within_latency(self, policy: Policy, target_ms: float) -> Policy:
        for _ in range(TRIES):
            # the evaluation reuses this figure
            latency = self.evaluator.latency(self._architecture(policy), runtime=policy.runtime).ms
            if latency <= target_ms:
                return policy
            narrower = self.space.scaled_keeps(policy, math.sqrt(AIM * target_ms / latency))
            if narrower == policy:  # the ratio rounds back onto the same grid point: one grid step narrower
                narrower = self.space.scaled_keeps(policy, 1.0 - self.space.settings.keep_step)
            if narrower == policy:
                return policy
            policy = narrower
        return policy

    def _shapes(self, policy: Policy) -> tuple[list[tuple[str, int, int]], int]:
        """Per compressible weight of the policy's architecture: (layer name, elements, rows); and the count of every
        other parameter, low-rank factors included (memoized by the widths that set the shapes)."""
        key = tuple(policy[name].keep for name in self.space.leaders) + tuple(c.rank for _, c in policy)
        if key not in self._shape_memo:
            model = self._architecture(policy)
            layer_of = {
                weight: name
                for name in self.space.layers
                if is_compressible(model.get_submodule(name))
                for weight in weight_keys(model, name)
            }
            weights, others = [], 0
            for name, parameter in model.named_parameters():
                if name in layer_of:
                    weights.append((layer_of[name], parameter.numel(), parameter.shape[0]))
                else:
                    others += parameter.numel()
            self._shape_memo[key] = (weights, others)
        return self._shape_memo[key]

    def size_estimate(self, policy: Policy) -> float:
        """Estimated packed bytes of ``policy`` (header not counted; low-rank factors count as fp32)."""
        weights, others = self._shapes(policy)
        total = 4.0 * others
        for name, numel, _ in weights:
            index = self._index[name]
            total += self._payload(index, policy[name]) * numel / self._numel[index]
        return max(total, 1.0)

    def _within_size(self, policy: Policy, budget_bytes: int) -> Policy:
        correction = statistics.median(self.size_ratios[-WINDOW:])
        for _ in range(TRIES):
            size = correction * self.size_estimate(policy)
            if size <= budget_bytes:
                return policy
            sparser = self.space.scaled_density(policy, AIM * budget_bytes / size)
            if sparser == policy:
                return policy
            policy = sparser
        return policy
