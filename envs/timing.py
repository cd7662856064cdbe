"""Latency measured by running the model: one protocol for baselines, candidates, exports and latency tables.

A measurement is several short rounds after a warm-up. Interference from a shared machine only ever adds
time, so the latency is the **minimum of the round medians**, and its **spread** is the range of the round
medians (how much a round can be off). Rounds continue, up to :data:`MAX_ROUNDS` or :data:`TIME_CAP_S`,
until the two fastest rounds agree within :data:`ROUND_AGREEMENT`, so that no figure rests on one lucky
round. The reference protocols are ``torch.utils.benchmark``'s ``adaptive_autorange`` (IQR-based stopping)
and pyperf (many short runs, spread reported); this one keeps the profile's call count per measurement on a
quiet machine and spends more only when the rounds disagree.

On a shared machine that is not enough: its speed changes in regimes lasting seconds (on a 2-core cloud VM
with no steal time reported, one small ResNet took 13.5-14 ms for stretches of 10-20 s and 18-24 ms between
them), longer than a measurement, so the minimum of one measurement's rounds is whatever regime it fell in.
:func:`time_paired` therefore alternates each round of the model with a round of a fixed **reference**
model; a regime slows both, so the ratio of a round to its neighbouring reference rounds holds still (its
10th-90th percentile range was 1.17x where the raw rounds' was 1.5x). The latency is the median ratio times
the reference's **anchor**: the fastest reference round seen so far (:class:`Paired`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from core.spec import shape_on
from envs.profile import DeviceProfile
from methods.examples import random_batch

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
    anchor_ms: float = math.nan
    """For a paired measurement, the reference's anchor it is scaled by (NaN for one timed alone)."""

    @property
    def relative_spread(self) -> float:
        """``spread_ms / ms`` (0 for a zero latency)."""
        return self.spread_ms / self.ms if self.ms > 0 else 0.0

    def near(self, target_ms: float) -> bool:
        """True when the latency is within target but its spread reaches past it: one more measurement decides."""
        return self.ms <= target_ms < self.ms + self.spread_ms

    def worst(self, other: Latency) -> Latency:
        """The slower of two measurements of the same model, with the larger spread (a confirmed figure); a
        paired ``other`` is first scaled to this one's anchor."""
        other = other.reanchored(self.anchor_ms)
        return Latency(max(self.ms, other.ms), max(self.spread_ms, other.spread_ms), self.rounds + other.rounds,
                       self.anchor_ms)

    def reanchored(self, anchor_ms: float) -> Latency:
        """A paired measurement scaled to another anchor of its reference (unchanged if either is NaN)."""
        if math.isnan(self.anchor_ms) or math.isnan(anchor_ms) or anchor_ms == self.anchor_ms:
            return self
        scale = anchor_ms / self.anchor_ms
        return Latency(self.ms * scale, self.spread_ms * scale, self.rounds, anchor_ms)


def calls_per_round(device: DeviceProfile) -> int:
    """Timed calls in one round: the profile's ``repeats`` spread over :data:`MIN_ROUNDS` rounds."""
    return max(1, math.ceil(device.repeats / MIN_ROUNDS))


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> float:
    """Latency in milliseconds of one forward pass at the profile's batch and threads (see :func:`measure`)."""
    return measure(model, input_shape, device).ms


def measure(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> Latency:
    """The latency and spread of one forward pass of ``model`` at the profile's batch and threads."""
    return time_rounds(model, example_input(input_shape, device), device)


def measure_paired(model: nn.Module, reference: nn.Module, input_shape: Sequence[int], device: DeviceProfile,
                   min_reference_rounds: int = 0) -> Paired:
    """:func:`time_paired` on the profile's example input (as :func:`measure`)."""
    return time_paired(model, reference, example_input(input_shape, device), device, min_reference_rounds)


def example_input(input_shape: Sequence[int], device: DeviceProfile) -> torch.Tensor:
    """The fixed random batch every measurement times: the profile's batch and input shape (else ``input_shape``)."""
    shape = shape_on(device.input_shape, input_shape)
    return random_batch(shape, device.batch, torch.Generator().manual_seed(0))


def time_forward(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> float:
    """Latency in milliseconds of ``model(example)`` with the profile's threads (see :func:`time_rounds`)."""
    return time_rounds(model, example, device).ms


def time_rounds(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> Latency:
    """Times ``model(example)`` with the protocol of this module: warm-up, then rounds of short medians."""
    per_round = calls_per_round(device)
    medians: list[float] = []
    with _timing(device, example, model):
        started = time.perf_counter()
        while len(medians) < MIN_ROUNDS or not _settled(medians, started):
            medians.append(_round_median(model, example, per_round))
    return Latency(min(medians), max(medians) - min(medians), len(medians))


@contextmanager
def _timing(device: DeviceProfile, example: torch.Tensor, *models: nn.Module) -> Iterator[None]:
    """Eval mode, the profile's threads and inference mode for timing ``models``, each warmed up first; the
    thread count and training modes are restored after."""
    previous_threads = torch.get_num_threads()
    modes = [(model, getattr(model, "training", False)) for model in models]
    for model in models:
        model.eval()
    torch.set_num_threads(device.threads)
    try:
        with torch.inference_mode():
            for _ in range(device.warmup):
                for model in models:
                    model(example)
            yield
    finally:
        torch.set_num_threads(previous_threads)
        for model, mode in modes:
            model.train(mode)


@dataclass(frozen=True)
class Paired:
    """Rounds of a model alternated with rounds of a reference model (:func:`time_paired`)."""

    rounds: tuple[float, ...]
    """The model's round medians (ms)."""
    reference: tuple[float, ...]
    """The reference's round medians (ms), one before the first of the model's rounds and one after each."""
    alone: tuple[float, ...] = ()
    """Rounds of the reference timed alone before the pairs, to find its anchor (ms)."""

    @property
    def fastest_reference(self) -> float:
        """The fastest reference round of this measurement (a candidate for the anchor)."""
        return min(self.reference + self.alone)

    @property
    def ratios(self) -> list[float]:
        """Each of the model's rounds over the mean of the reference rounds either side of it."""
        return [value / (0.5 * (before + after))
                for value, before, after in zip(self.rounds, self.reference, self.reference[1:], strict=False)]

    def latency(self, anchor_ms: float) -> Latency:
        """The latency with the reference taking ``anchor_ms``: the median ratio times the anchor; the spread
        is the range of the ratios times the anchor."""
        ratios = self.ratios
        return Latency(anchor_ms * statistics.median(ratios), anchor_ms * (max(ratios) - min(ratios)), len(ratios),
                       anchor_ms)


def time_paired(model: nn.Module, reference: nn.Module, example: torch.Tensor, device: DeviceProfile,
                min_reference_rounds: int = 0) -> Paired:
    """Times ``model(example)`` in rounds alternated with rounds of ``reference(example)`` (see the module
    docstring), until the last :data:`MIN_ROUNDS` ratios agree within twice :data:`ROUND_AGREEMENT` or a cap
    is reached; ``min_reference_rounds`` rounds of the reference alone come first (to find its anchor)."""
    per_round = calls_per_round(device)
    with _timing(device, example, model, reference):
        alone = [_round_median(reference, example, per_round) for _ in range(min_reference_rounds)]
        references, rounds = [_round_median(reference, example, per_round)], []
        started = time.perf_counter()
        while len(rounds) < MIN_ROUNDS or not _ratios_settled(Paired(tuple(rounds), tuple(references)), started):
            rounds.append(_round_median(model, example, per_round))
            references.append(_round_median(reference, example, per_round))
    return Paired(tuple(rounds), tuple(references), tuple(alone))


def _round_median(model: nn.Module, example: torch.Tensor, calls: int) -> float:
    """The median of ``calls`` timed calls of ``model(example)``, in milliseconds."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(example)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _ratios_settled(paired: Paired, started: float) -> bool:
    if len(paired.rounds) >= MAX_ROUNDS or time.perf_counter() - started > TIME_CAP_S:
        return True
    last = paired.ratios[-MIN_ROUNDS:]
    return max(last) - min(last) <= 2 * ROUND_AGREEMENT * statistics.median(last)


def _settled(medians: list[float], started: float) -> bool:
    """True when no further round is needed: the two fastest agree, or the round or time cap is reached."""
    if len(medians) >= MAX_ROUNDS or time.perf_counter() - started > TIME_CAP_S:
        return True
    fastest, second = sorted(medians)[:2]
    return second - fastest <= ROUND_AGREEMENT * fastest
