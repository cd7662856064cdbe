"""Budget repair: proposals outside the budget are moved just inside it; those inside are left alone."""

from __future__ import annotations

import pytest

from core.budget import Budget
from core.policy import LayerChoice, Policy
from core.space import SearchSpace, SpaceSettings
from envs.evaluator import Evaluator
from envs.tasks import load_task
from methods.pipeline import architecture
from search.budget_repair import BudgetRepair
from tests.fixtures.parameter_timing import FAST, FAST_TWO_RUNTIMES, ParameterTiming


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return ParameterTiming(load_task("lenet300"), FAST)


@pytest.fixture(scope="module")
def space(evaluator: Evaluator) -> SearchSpace:
    return SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                       tuple(evaluator.layers))


def _policy(keep1: float, keep2: float, sparsity: float = 0.0, bits: int = 32) -> Policy:
    keeps = {"fc1": keep1, "fc2": keep2, "fc3": 1.0}
    return Policy.from_choices({name: LayerChoice(sparsity, bits, keep) for name, keep in keeps.items()})


def _latency(evaluator: Evaluator, policy: Policy) -> float:
    task = evaluator.task
    return evaluator.measure_model(architecture(task.model, policy, task.input_shape)).ms


def _size(evaluator: Evaluator, policy: Policy) -> int:
    return evaluator.compress(policy, evaluator.refinement(), verify=False).size_bytes


def test_a_proposal_over_the_latency_target_is_narrowed_just_inside(evaluator: Evaluator, space: SearchSpace) -> None:
    target = 0.5 * _latency(evaluator, _policy(1.0, 1.0))
    repair = BudgetRepair(evaluator, space, Budget(latency_ms=target))
    wide = _policy(1.0, 0.5)
    moved = repair(wide)
    assert _latency(evaluator, moved) <= target < _latency(evaluator, wide)
    assert moved["fc1"].keep > moved["fc2"].keep  # the width profile's shape is kept
    wider = space.scaled_keeps(moved, 1.0 + space.settings.keep_step)
    assert wider == moved or _latency(evaluator, wider) > 0.8 * target  # and the target is used, not undershot
    inside = _policy(0.5, 0.5)
    assert _latency(evaluator, inside) <= target and repair(inside) is inside
    assert repair.moved == 1


def test_a_proposal_is_timed_on_its_own_runtime() -> None:
    evaluator = ParameterTiming(load_task("lenet300"), FAST_TWO_RUNTIMES)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers), runtimes=("torch", "torch-int8"))
    target = 0.6 * _latency(evaluator, _policy(1.0, 1.0))  # fp32 eager misses it; int8 (2x faster here) meets it
    repair = BudgetRepair(evaluator, space, Budget(latency_ms=target))
    int8 = Policy.from_choices(_policy(1.0, 1.0).choices, runtime="torch-int8")
    assert repair(int8) is int8
    moved = repair(Policy.from_choices(_policy(1.0, 1.0).choices, runtime="torch"))
    assert moved.runtime == "torch" and moved["fc1"].keep < 1.0


def test_a_proposal_over_the_size_budget_is_made_sparser_until_its_file_fits(
    evaluator: Evaluator, space: SearchSpace
) -> None:
    budget = Budget(size_bytes=_size(evaluator, _policy(1.0, 1.0, 0.0, 4)) // 4)
    repair = BudgetRepair(evaluator, space, budget)
    big = _policy(1.0, 1.0, 0.2, 4)
    assert repair(big) is big  # nothing observed yet: no estimate to trust
    seen = _policy(0.75, 0.75, 0.5, 4)
    repair.observe(seen, evaluator.evaluate(seen))
    moved = repair(big)
    assert _size(evaluator, moved) <= budget.size_bytes < _size(evaluator, big)
    assert {choice.keep for _, choice in moved} == {1.0}  # size is met by sparsity, not by narrowing
    assert _size(evaluator, moved) > 0.7 * budget.size_bytes  # close to the budget, not far below it
    small = _policy(1.0, 1.0, 0.9, 4)
    assert repair(small) is small


def test_moves_stay_on_the_space_grid(space: SearchSpace) -> None:
    policy = _policy(0.875, 0.5, 0.35, 4)
    for _, choice in space.scaled_density(policy, 0.37):
        assert round(choice.sparsity / space.settings.sparsity_step, 6).is_integer()
        assert choice.sparsity <= space.settings.sparsity_max
    narrowed = space.scaled_keeps(policy, 0.6)
    assert [narrowed[n].keep for n in ("fc1", "fc2", "fc3")] == [0.5, 0.25, 1.0]
    assert space.scaled_density(policy, 1.0) == policy
