"""Latency measured by running the model: one protocol for baselines, candidates, exports and latency tables.

A measurement is several short rounds after a warm-up. Interference from a shared machine only ever adds
time, so the latency is the **minimum of the round medians**, and its **spread** is the range of the round
medians (how much a round can be off). Rounds continue, up to :data:`MAX_ROUNDS` or :data:`TIME_CAP_S`,
until the two fastest rounds agree within :data:`ROUND_AGREEMENT`, so that no figure rests on one lucky
round. The reference protocols are ``torch.utils.benchmark``'s ``adaptive_autorange`` (IQR-based stopping)
and pyperf (many short runs, spread reported); this one keeps the profile's call count per measurement on a
quiet machine and spends more only when the rounds disagree.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from envs.profile import DeviceProfile

MIN_ROUNDS = 3
"""Rounds of every measurement."""
MAX_ROUNDS = 8
"""Most rounds of one measurement, when they keep disagreeing."""
ROUND_AGREEMENT = 0.05
"""The two fastest round medians must be within this fraction of each other to stop before ``MAX_ROUNDS``."""
TIME_CAP_S = 20.0
"""No further round starts after this many seconds of timing (at least ``MIN_ROUNDS`` always run)."""
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
"""glibc malloc settings of every process that times models, and the ones a deployment should use.

With glibc's defaults the threshold for serving a block by ``mmap`` moves with the process's history and
freed memory is returned to the system, so a small model's activations are mapped and page-faulted afresh
on many calls and its latency varies by up to 2x between processes (a MobileNet measured 13-16.5 ms with the
defaults, 8.0-8.5 ms with these, across fresh processes on one machine). A fixed 32 MiB mmap threshold and a
1 GiB trim threshold keep activations in the heap. Both variables are read when a process starts, so they
are set in the environment of the timing process, not from inside Python.
"""


def allocator_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` (a process environment) with :data:`ALLOCATOR_ENV` set, for a process that times models."""
    return {**base, **ALLOCATOR_ENV}


def allocator_text() -> str:
    """The allocator settings as shell assignments, for reports and the README."""
    return " ".join(f"{name}={value}" for name, value in ALLOCATOR_ENV.items())


@dataclass(frozen=True)
class Latency:
    """One latency measurement, in milliseconds."""

    ms: float
    """The latency: the minimum of the round medians."""
    spread_ms: float
    """Range (max - min) of the round medians: how far one round of this measurement can be off."""
    rounds: int
    """Rounds run."""

    @property
    def relative_spread(self) -> float:
        """``spread_ms / ms`` (0 for a zero latency)."""
        return self.spread_ms / self.ms if self.ms > 0 else 0.0

    def near(self, target_ms: float) -> bool:
        """True when the latency is within target but its spread reaches past it: one more measurement decides."""
        return self.ms <= target_ms < self.ms + self.spread_ms

    def worst(self, other: Latency) -> Latency:
        """The slower of two measurements of the same model, with the larger spread (a confirmed figure)."""
        return Latency(max(self.ms, other.ms), max(self.spread_ms, other.spread_ms), self.rounds + other.rounds)


def calls_per_round(device: DeviceProfile) -> int:
    """Timed calls in one round: the profile's ``repeats`` spread over :data:`MIN_ROUNDS` rounds."""
    return max(1, math.ceil(device.repeats / MIN_ROUNDS))


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> float:
    """Latency in milliseconds of one forward pass at the profile's batch and threads (see :func:`measure`)."""
    return measure(model, input_shape, device).ms


def measure(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> Latency:
    """The latency and spread of one forward pass of ``model`` at the profile's batch and threads."""
    shape = device.input_shape or tuple(input_shape)
    example = torch.randn(device.batch, *shape, generator=torch.Generator().manual_seed(0))
    return time_rounds(model, example, device)


def time_forward(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> float:
    """Latency in milliseconds of ``model(example)`` with the profile's threads (see :func:`time_rounds`)."""
    return time_rounds(model, example, device).ms


def time_rounds(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> Latency:
    """Times ``model(example)`` with the protocol of this module: warm-up, then rounds of short medians."""
    previous_threads = torch.get_num_threads()
    was_training = getattr(model, "training", False)
    model.eval()
    torch.set_num_threads(device.threads)
    per_round = calls_per_round(device)
    medians: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(device.warmup):
                model(example)
            started = time.perf_counter()
            while len(medians) < MIN_ROUNDS or not _settled(medians, started):
                times = []
                for _ in range(per_round):
                    start = time.perf_counter()
                    model(example)
                    times.append(time.perf_counter() - start)
                medians.append(1000.0 * statistics.median(times))
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return Latency(min(medians), max(medians) - min(medians), len(medians))


def _settled(medians: list[float], started: float) -> bool:
    """True when no further round is needed: the two fastest agree, or the round or time cap is reached."""
    if len(medians) >= MAX_ROUNDS or time.perf_counter() - started > TIME_CAP_S:
        return True
    fastest, second = sorted(medians)[:2]
    return second - fastest <= ROUND_AGREEMENT * fastest
