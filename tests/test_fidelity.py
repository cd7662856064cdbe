"""Multi-fidelity evaluation: within-budget candidates that screen in the top fraction are fine-tuned again."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from core.budget import Budget
from core.policy import LayerChoice, Policy
from core.result import Result
from envs.device import DeviceProfile
from envs.evaluator import Evaluator, EvaluatorSettings
from envs.tasks import load_task
from search.fidelity import Promotion

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)
SETTINGS = EvaluatorSettings(promote_top=0.5, promote_steps=12, timing="inline")


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST, SETTINGS)


def _policy(sparsity: float, bits: int = 4) -> Policy:
    return Policy.from_choices({name: LayerChoice(sparsity, bits) for name in ("fc1", "fc2", "fc3")})


def test_the_first_within_budget_candidate_is_promoted_and_scored_after_its_fine_tune(evaluator: Evaluator) -> None:
    promotion = Promotion(evaluator, Budget())
    screened = evaluator.evaluate(_policy(0.9, 2))
    assert screened.finetune_steps == SETTINGS.finetune.steps and screened.screen_accuracy == screened.val_accuracy
    result = promotion(_policy(0.9, 2), screened)
    assert result.finetune_steps == SETTINGS.promote_steps
    assert result.screen_accuracy == screened.val_accuracy
    assert result.val_accuracy != screened.val_accuracy  # a different model: compressed again and fine-tuned
    assert result.seconds > screened.seconds
    assert (result.size_bytes, result.latency_ms) == pytest.approx((screened.size_bytes, screened.latency_ms),
                                                                   rel=0.05)


def test_only_the_top_fraction_of_within_budget_screens_is_promoted(evaluator: Evaluator) -> None:
    promotion = Promotion(evaluator, Budget(size_bytes=10**9))
    promotion.screened = [0.9, 0.8, 0.7]  # top half of four: >= 0.8
    weak = Result(val_accuracy=0.5, size_bytes=1000, latency_ms=1.0, screen_accuracy=0.5)
    assert promotion(_policy(0.5), weak) is weak
    assert promotion.ranks_top(0.85) and not promotion.ranks_top(0.75)
    over = Promotion(evaluator, Budget(size_bytes=10))
    best = Result(val_accuracy=0.99, size_bytes=1000, latency_ms=1.0, screen_accuracy=0.99)
    assert over(_policy(0.5), best) is best and over.screened == []  # outside the budget: never promoted
    failed = Result.failed("boom")
    assert promotion(_policy(0.5), failed) is failed


def test_a_resumed_run_ranks_against_the_screens_of_its_earlier_trials(evaluator: Evaluator) -> None:
    earlier = [
        Result(val_accuracy=0.95, size_bytes=10, latency_ms=1.0, finetune_steps=12, screen_accuracy=0.6),
        Result(val_accuracy=0.4, size_bytes=10, latency_ms=1.0, screen_accuracy=0.4),
        Result(val_accuracy=0.7, size_bytes=10, latency_ms=1.0),  # an earlier run folder: no screening column
        Result(val_accuracy=0.99, size_bytes=10**9, latency_ms=1.0, screen_accuracy=0.99),  # over budget
    ]
    promotion = Promotion(evaluator, Budget(size_bytes=10**6), earlier)
    assert sorted(promotion.screened) == [0.4, 0.6, 0.7]


def test_promotion_off_leaves_every_result_as_screened(evaluator: Evaluator) -> None:
    off = Evaluator(evaluator.task, FAST, replace(SETTINGS, promote_top=0.0))
    promotion = Promotion(off, Budget())
    screened = off.evaluate(_policy(0.8))
    assert promotion(_policy(0.8), screened) is screened


def test_promotion_settings_are_checked() -> None:
    for bad in ({"promote_top": 1.5}, {"promote_steps": 0}, {"promote_lr": 0.0}):
        with pytest.raises(ValueError, match="promote"):
            EvaluatorSettings(**bad)
    assert math.isclose(SETTINGS.promotion.lr, 1e-3) and SETTINGS.promotion.steps == 12
