"""The evaluator on a real built-in task: caching, failures, measurements."""

from __future__ import annotations

import pytest

from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from search.policy import LayerChoice, Policy

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST)


def test_layers_and_groups(evaluator: Evaluator) -> None:
    assert evaluator.layer_names == ["fc1", "fc2", "fc3"]
    assert evaluator.leaders == ["fc1", "fc2"]


def test_measurements_and_cache(evaluator: Evaluator) -> None:
    policy = Policy.from_choices({"fc1": LayerChoice(0.9, 4), "fc2": LayerChoice(0.5, 6, keep=0.5)})
    first = evaluator.evaluate(policy)
    assert first.ok and 0.8 < first.val_accuracy <= 1.0
    assert first.size_bytes == len(evaluator.compress(policy).blob)
    assert first.latency_ms > 0 and first.seconds > 0
    assert first.params < 266_610 and first.macs < 266_200
    assert evaluator.evaluate(policy) is first
    dense = evaluator.evaluate(Policy())
    assert dense.size_bytes > 4 * 266_610 and first.size_bytes < dense.size_bytes / 10


def test_a_candidate_that_raises_is_recorded_as_failed(evaluator: Evaluator) -> None:
    broken = Policy.from_choices({"no.such.layer": LayerChoice(0.5, 4)})
    seen: list[Exception] = []
    result = evaluator.evaluate(broken, on_error=seen.append)
    assert not result.ok and "ValueError" in result.error and "no.such.layer" in result.error and seen
    assert evaluator.evaluate(Policy.from_choices({"fc1": LayerChoice(0.5, 8)})).ok
