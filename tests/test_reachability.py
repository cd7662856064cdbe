"""Budgets checked before the search: the latency target against the fastest model the space allows."""

from __future__ import annotations

import pytest

from core.budget import Budget
from core.errors import UsageError
from core.space import SearchSpace, SpaceSettings
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from envs.timing import Latency
from search.reachability import LatencyReach, check_latency, latency_notes, noise_warning

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST)


def _space(evaluator: Evaluator, keep_min: float) -> SearchSpace:
    return SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(keep_min=keep_min))


def test_a_reachable_target_returns_both_measurements(evaluator: Evaluator) -> None:
    reach = check_latency(evaluator, _space(evaluator, 0.25), Budget(latency_ms=1e6))
    assert reach is not None and 0 < reach.fastest.ms and 0 < reach.baseline.ms
    assert reach.fastest.rounds >= 3 and reach.baseline.spread_ms >= 0
    assert check_latency(evaluator, _space(evaluator, 0.25), Budget()) is None


def test_an_unreachable_target_names_the_fastest_model_and_other_runtimes(evaluator: Evaluator) -> None:
    with pytest.raises(UsageError) as error:
        check_latency(evaluator, _space(evaluator, 0.25), Budget(latency_ms=1e-6))
    text = str(error.value)
    assert "\n" not in text and "below the fastest model the search space allows" in text
    assert "torch-int8" in text  # the baseline on another runtime this machine has


def test_notes_state_the_target_as_a_fraction_of_the_baseline_and_warn_when_noisy() -> None:
    quiet = LatencyReach(Latency(100.0, 2.0, 3), Latency(20.0, 0.5, 3))
    assert noise_warning(quiet, 50.0) is None
    notes = latency_notes(quiet, 30.0)
    assert len(notes) == 1 and "30 ms = 30% of the full model's 100.00 ms" in notes[0]
    noisy = LatencyReach(Latency(100.0, 25.0, 8), Latency(20.0, 5.0, 8))
    assert "varies by 25%" in noise_warning(noisy, 50.0)
    tight = LatencyReach(Latency(100.0, 2.0, 3), Latency(20.0, 1.0, 3))
    assert noise_warning(tight, 21.0) is not None  # the spread is half the room left to the target
    assert latency_notes(None, 30.0) == [] and latency_notes(quiet, None) == []
    assert latency_notes(noisy, 50.0)[-1].startswith("Warning: latency on this machine varies")


class _PerRuntime(Evaluator):
    """An evaluator whose device timings are scripted per runtime (int8 is the fast one here)."""

    SCRIPT = {"torch": 10.0, "torch-int8": 3.0}

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - Evaluator's arguments
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []

    def measure_here(self, model, runnable=None, runtime=None):  # noqa: ANN001, ANN201 - Evaluator's signature
        name = self.device_for(runtime).runtime
        self.asked.append(name)
        return Latency(self.SCRIPT[name], 0.1, 3)


def test_the_narrowest_model_is_timed_on_every_allowed_runtime_and_the_fastest_counts(evaluator: Evaluator) -> None:
    device = DeviceProfile(name="test-two", runtimes=("torch", "torch-int8"), threads=1, batch=8, warmup=1,
                           repeats=3)
    scripted = _PerRuntime(evaluator.task, device)
    space = SearchSpace(tuple(scripted.layer_names), tuple(scripted.leaders), SpaceSettings(), runtimes=device.runtimes)
    reach = check_latency(scripted, space, Budget(latency_ms=5.0))
    assert reach is not None and (reach.runtime, reach.fastest.ms, reach.baseline.ms) == ("torch-int8", 3.0, 10.0)
    assert sorted(scripted.asked) == ["torch", "torch", "torch-int8"]  # baseline on the default, narrowest on both
    assert "3.00 ms on torch-int8, the fastest of the allowed runtimes" in latency_notes(reach, 5.0)[0]
    with pytest.raises(UsageError) as error:
        check_latency(scripted, space, Budget(latency_ms=2.0))
    text = str(error.value)
    assert "\n" not in text
    assert "device 'test-two' (torch, torch-int8): 3.0 ms at the narrowest widths on torch-int8" in text
    single = SearchSpace(space.layers, space.leaders, SpaceSettings())  # the runtime not searched: the default only
    with pytest.raises(UsageError, match="10.0 ms at the narrowest widths, against"):
        check_latency(scripted, single, Budget(latency_ms=5.0))
