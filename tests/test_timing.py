"""The latency protocol (envs/timing.py): rounds of short medians, the fastest round kept, the spread reported."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from envs.profile import DeviceProfile
from envs.timing import MAX_ROUNDS, MIN_ROUNDS, Latency, Paired, calls_per_round, time_paired, time_rounds

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


class Regime:
    """A machine whose speed changes: every call takes its model's base time times the current factor, and
    the factor moves to the next of ``factors`` every ``every`` calls (of any model)."""

    def __init__(self, factors: list[float], every: int):
        self.factors, self.every, self.calls = factors, every, 0

    def factor(self) -> float:
        self.calls += 1
        return self.factors[(self.calls // self.every) % len(self.factors)]


class OnMachine(nn.Module):
    """Sleeps ``base`` seconds times the machine's current factor."""

    def __init__(self, base: float, machine: Regime):
        super().__init__()
        self.base, self.machine = base, machine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.base * self.machine.factor())
        return x


def test_a_paired_figure_holds_still_when_the_machine_changes_speed_for_whole_measurements() -> None:
    per_round = calls_per_round(DEVICE)
    # the machine is 1.8x slower for stretches longer than a whole measurement alone would take
    machine = Regime([1.0, 1.8], every=4 * MAX_ROUNDS * per_round)
    model, reference = OnMachine(0.006, machine), OnMachine(0.003, machine)
    figures = []
    anchor = float("inf")
    for _ in range(4):
        paired = time_paired(model, reference, torch.zeros(1, 3), DEVICE)
        anchor = min(anchor, paired.fastest_reference)
        figures.append(paired.latency(anchor).ms)
    assert statistics.median(paired.ratios) == pytest.approx(2.0, rel=0.15)
    assert 3.0 * 1.8 * 0.9 < anchor * 2 < 1.8 * 6.0  # some measurement ran in the fast regime
    assert max(figures[1:]) / min(figures[1:]) < 1.2  # the same model, the same figure, in either regime
    machine.calls = 0
    fast = time_rounds(model, torch.zeros(1, 3), DEVICE).ms
    machine.calls = machine.every
    slow = time_rounds(model, torch.zeros(1, 3), DEVICE).ms
    assert slow / fast > 1.4  # timed alone, it measures whichever regime it fell in


def test_paired_rounds_give_ratios_to_the_neighbouring_reference_rounds_and_scale_to_any_anchor() -> None:
    paired = Paired(rounds=(4.0, 6.0, 4.4), reference=(2.0, 2.0, 4.0, 2.0), alone=(1.9,))
    assert paired.ratios == pytest.approx([2.0, 2.0, 4.4 / 3.0])
    assert paired.fastest_reference == 1.9
    latency = paired.latency(2.0)
    assert latency.ms == pytest.approx(4.0) and latency.spread_ms == pytest.approx(2.0 * (2.0 - 4.4 / 3.0))
    assert latency.anchor_ms == 2.0 and latency.rounds == 3
    halved = latency.reanchored(1.0)
    assert halved.ms == pytest.approx(2.0) and halved.anchor_ms == 1.0
    assert Latency(5.0, 1.0, 3).reanchored(1.0) == Latency(5.0, 1.0, 3)  # a figure timed alone has no anchor
    assert latency.worst(halved).ms == pytest.approx(4.0)  # compared at one anchor
