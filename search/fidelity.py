"""Multi-fidelity evaluation: every candidate is screened cheaply; the promising ones are fine-tuned again.

A heavily pruned network reads near chance before any fine-tune, so a screening score alone cannot rank
the candidates where the budgets bind. As in successive halving (ASHA's asynchronous promotion rule),
every candidate gets the screening fidelity (the evaluator's ``finetune_steps``); a within-budget candidate
whose screening accuracy ranks in the top ``promote_top`` fraction of the run's within-budget screening
accuracies so far (itself included) is compressed again with ``promote_steps`` of fine-tuning, and the
searcher learns from that score. Candidates outside the budget are never promoted: they cannot reach the
front, and their screening score is enough to steer away from them.

The Ray sweep has its own rungs (ASHA over the fine-tune steps); this serves the in-process searchers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from envs.evaluator import Evaluator


class Promotion:
    """Promotes promising candidates to the higher fidelity; see the module docstring.

    Args:
        evaluator: measures candidates (its settings hold ``promote_top``, ``promote_steps``, ``promote_lr``).
        budget: the run's budget (only candidates within it are promoted).
        history: results of the run so far (a resumed run's trials), whose screening accuracies rank the next.
    """

    def __init__(self, evaluator: Evaluator, budget: Budget, history: Sequence[Result] = ()):
        self.evaluator = evaluator
        self.budget = budget
        self.fraction = evaluator.settings.promote_top
        self.screened: list[float] = []
        """Screening accuracies of the within-budget candidates so far."""
        for result in history:
            if self._within(result):
                self.screened.append(_screen(result))

    def _within(self, result: Result) -> bool:
        return result.ok and self.budget.admits(result.size_bytes, result.latency_ms)

    def ranks_top(self, accuracy: float) -> bool:
        """True when ``accuracy`` is within the top fraction of the screening accuracies recorded so far."""
        ranked = sorted(self.screened, reverse=True)
        if not ranked or self.fraction <= 0:
            return False
        cutoff = ranked[max(1, math.floor(self.fraction * len(ranked) + 0.5)) - 1]
        return accuracy >= cutoff

    def __call__(self, policy: Policy, result: Result) -> Result:
        """``result``, or the promoted evaluation of ``policy`` when the screening says so."""
        if self.fraction <= 0 or not self._within(result):
            return result
        screen = _screen(result)
        self.screened.append(screen)
        if not self.ranks_top(screen):
            return result
        promoted = self.evaluator.evaluate(policy, finetune=self.evaluator.settings.promotion)
        if not promoted.ok:
            return result
        return replace(promoted, screen_accuracy=screen, seconds=result.seconds + promoted.seconds)


def _screen(result: Result) -> float:
    """A result's screening accuracy (its ``val_accuracy`` where an earlier run folder did not record it)."""
    return result.val_accuracy if math.isnan(result.screen_accuracy) else result.screen_accuracy
