"""The latency protocol (envs/timing.py): rounds of short medians, the fastest round kept, the spread reported."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from envs.profile import DeviceProfile
from envs.timing import MAX_ROUNDS, MIN_ROUNDS, Latency, calls_per_round, time_rounds

DEVICE = DeviceProfile(name="test-timing", threads=1, batch=1, warmup=1, repeats=6)


class Sleeper(nn.Module):
    """Takes ``base`` seconds a call, or ``slow`` seconds for each of its first ``warmup + slow_calls`` calls."""

    def __init__(self, base: float, slow: float = 0.0, slow_calls: int = 0, warmup: int = DEVICE.warmup):
        super().__init__()
        self.base, self.slow, self.slow_until = base, slow, warmup + slow_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.slow if self.calls <= self.slow_until else self.base)
        return x


def test_a_steady_model_takes_the_minimum_rounds_with_a_small_spread() -> None:
    model = Sleeper(0.004)
    latency = time_rounds(model, torch.zeros(1, 3), DEVICE)
    assert latency.rounds == MIN_ROUNDS
    assert model.calls == DEVICE.warmup + MIN_ROUNDS * calls_per_round(DEVICE)
    assert 4.0 <= latency.ms < 6.0 and latency.spread_ms < 1.0


def test_interference_in_early_rounds_is_outlasted_and_shows_in_the_spread() -> None:
    per_round = calls_per_round(DEVICE)
    model = Sleeper(0.004, slow=0.012, slow_calls=2 * per_round)  # the first two rounds run 3x slower
    latency = time_rounds(model, torch.zeros(1, 3), DEVICE)
    assert MIN_ROUNDS < latency.rounds <= MAX_ROUNDS  # one quiet round alone does not settle it
    assert 4.0 <= latency.ms < 6.0  # the quiet rounds give the latency
    assert latency.spread_ms > 5.0  # the noisy ones give the spread


def test_near_and_worst() -> None:
    measured = Latency(9.5, 1.0, 3)
    assert measured.near(10.0) and not measured.near(9.0) and not Latency(8.0, 1.0, 3).near(10.0)
    confirmed = measured.worst(Latency(10.4, 0.5, 3))
    assert confirmed == Latency(10.4, 1.0, 6)
    assert Latency(10.0, 1.0, 3).relative_spread == pytest.approx(0.1)
