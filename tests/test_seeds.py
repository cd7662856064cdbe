"""Uniform seed policies: inside the budget, and using it (the next grid step would leave it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.budget import Budget
from core.policy import LayerChoice, Policy
from core.space import SearchSpace, SpaceSettings
from envs.evaluator import Evaluator
from envs.tasks import load_task
from methods.pipeline import architecture
from search.seeds import (
    SEEDS_FILE,
    run_seeds,
    seed_bits,
    seed_limit,
    uniform_policy,
    uniform_seeds,
    widest_first,
)
from tests.fixtures.parameter_timing import FAST, FAST_TWO_RUNTIMES, ParameterTiming


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return ParameterTiming(load_task("lenet300"), FAST)


def _space(evaluator: Evaluator, **settings: object) -> SearchSpace:
    return SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(**settings),
                       tuple(evaluator.layers))


def _latency(evaluator: Evaluator, space: SearchSpace, keep: float) -> float:
    task = evaluator.task
    return evaluator.latency(architecture(task.model, uniform_policy(space, 32, keep), task.input_shape)).ms


def _size(evaluator: Evaluator, policy: Policy) -> int:
    return evaluator.compress(policy, evaluator.refinement(), verify=False).size_bytes


def test_seeds_fit_both_budgets_and_the_next_grid_step_would_not(evaluator: Evaluator) -> None:
    space = _space(evaluator)
    full = _size(evaluator, Policy())
    target = 0.6 * _latency(evaluator, space, 1.0)
    budget = Budget(size_bytes=full // 20, latency_ms=target)
    seeds = uniform_seeds(evaluator, space, budget)
    assert [policy["fc1"].bits for policy in seeds] == [8, 4]
    step, sparsity_step = space.settings.keep_step, space.settings.sparsity_step
    for policy in seeds:
        choices = {choice.keep for name, choice in policy if name in space.leaders}
        assert len(choices) == 1 and policy["fc3"].keep == 1.0
        keep = choices.pop()
        assert _latency(evaluator, space, keep) <= target < _latency(evaluator, space, keep + step)
        assert len({choice.sparsity for _, choice in policy}) == 1
        sparsity = policy["fc1"].sparsity
        assert _size(evaluator, policy) <= budget.size_bytes
        less = uniform_policy(space, policy["fc1"].bits, keep, round(sparsity - sparsity_step, 6))
        assert _size(evaluator, less) > budget.size_bytes
    assert seeds[0]["fc1"].sparsity > seeds[1]["fc1"].sparsity  # 8-bit codes need more sparsity than 4-bit


def test_without_budgets_the_seeds_are_the_plain_uniform_codes(evaluator: Evaluator) -> None:
    space = _space(evaluator)
    assert uniform_seeds(evaluator, space, Budget()) == [uniform_policy(space, 8), uniform_policy(space, 4)]


def test_budgets_no_uniform_policy_meets_give_no_seed(evaluator: Evaluator) -> None:
    space = _space(evaluator, sparsity_max=0.5)
    assert uniform_seeds(evaluator, space, Budget(size_bytes=2_000)) == []
    narrowest = _latency(evaluator, space, space.keep_grid()[0])
    assert uniform_seeds(evaluator, space, Budget(latency_ms=0.5 * narrowest)) == []


def test_seed_widths_follow_the_space(evaluator: Evaluator) -> None:
    assert seed_bits(_space(evaluator)) == (8, 4)
    assert seed_bits(_space(evaluator, bits=(2, 3, 32))) == (3,)
    assert seed_bits(_space(evaluator, bits=(32,))) == (32,)
    assert seed_bits(_space(evaluator, bits=(4, 6))) == (4,)
    fixed_width = _space(evaluator, channel_pruning=False)
    seeds = uniform_seeds(evaluator, fixed_width, Budget(latency_ms=1e-3))  # width is not searched: not checked
    assert all(choice.keep == 1.0 for policy in seeds for _, choice in policy)


def test_a_run_folder_keeps_its_seeds_for_the_resume(evaluator: Evaluator, tmp_path: Path) -> None:
    space = _space(evaluator)
    budget = Budget(size_bytes=_size(evaluator, Policy()) // 10)
    seeds = run_seeds(tmp_path, evaluator, space, budget)
    assert seeds and [Policy.from_dict(item) for item in json.loads((tmp_path / SEEDS_FILE).read_text())] == seeds
    other = replace(budget, size_bytes=budget.size_bytes * 2)  # a resume reads the file; nothing is recomputed
    assert run_seeds(tmp_path, evaluator, space, other) == seeds


def test_seeds_lie_on_the_space_grid(evaluator: Evaluator) -> None:
    space = _space(evaluator, keep_step=0.25, sparsity_step=0.1)
    budget = Budget(size_bytes=_size(evaluator, Policy()) // 15, latency_ms=0.7 * _latency(evaluator, space, 1.0))
    for policy in uniform_seeds(evaluator, space, budget):
        assert space.sample(_Replay(space.params(policy))) == policy
        assert isinstance(policy["fc1"], LayerChoice)


class _Replay:
    """A suggest that returns recorded values, checking that each lies on the decision's grid."""

    def __init__(self, values: dict):
        self.values = values

    def float(self, name: str, low: float, high: float, step: float) -> float:
        value = self.values[name]
        assert low - 1e-9 <= value <= high + 1e-9 and abs(round((value - low) / step) * step + low - value) < 1e-6
        return value

    def categorical(self, name: str, choices: list) -> object:
        assert self.values[name] in choices
        return self.values[name]


def test_a_space_searching_the_runtime_gets_seeds_on_every_runtime_each_using_its_speed() -> None:
    evaluator = ParameterTiming(load_task("lenet300"), FAST_TWO_RUNTIMES)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers), runtimes=("torch", "torch-int8"))
    target = 0.6 * _latency(evaluator, space, 1.0)
    seeds = uniform_seeds(evaluator, space, Budget(latency_ms=target))
    assert sorted({policy.runtime for policy in seeds}) == ["torch", "torch-int8"]
    keeps = {policy.runtime: policy["fc1"].keep for policy in seeds}
    assert keeps["torch-int8"] > keeps["torch"]  # the faster runtime meets the target with wider layers
    for policy in seeds:
        task = evaluator.task
        model = architecture(task.model, policy, task.input_shape)
        assert evaluator.latency(model, runtime=policy.runtime).ms <= target


def test_a_run_evaluates_at_most_a_fifth_of_its_candidates_as_seeds_the_widest_first(tmp_path: Path) -> None:
    evaluator = ParameterTiming(load_task("lenet300"), FAST_TWO_RUNTIMES)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers), runtimes=("torch", "torch-int8"))
    budget = Budget(latency_ms=0.6 * _latency(evaluator, space, 1.0))
    every = uniform_seeds(evaluator, space, budget)
    assert len(every) == 4 and seed_limit(10) == 2 and seed_limit(40) == 8
    kept = run_seeds(tmp_path, evaluator, space, budget, trials=10)
    assert kept == widest_first(every, 2) and len(kept) == 2
    assert {policy.runtime for policy in kept} == {"torch-int8"}  # the faster runtime keeps more channels
    assert [policy["fc1"].bits for policy in kept] == [8, 4]
    assert run_seeds(tmp_path, evaluator, space, budget, trials=40) == kept  # a resumed run replays its seeds
