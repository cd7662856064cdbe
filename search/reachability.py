"""Budgets checked before any search: a target the search space cannot reach is refused with what would reach it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.budget import Budget
from core.errors import UsageError
from core.space import SearchSpace
from envs.evaluator import Evaluator
from envs.runtimes import RUNTIMES, RuntimeConversionError, runnable_for
from envs.timing import Latency, measure
from methods.pipeline import architecture


@dataclass(frozen=True)
class LatencyReach:
    """The latency range the search space spans on the run's device."""

    baseline: Latency
    """The uncompressed model (on the device's default runtime)."""
    fastest: Latency
    """The narrowest widths and lowest ranks the space allows, on the fastest of the space's runtimes."""
    runtime: str = ""
    """That runtime, when the space searches the runtime ("" otherwise)."""


def check_size(evaluator: Evaluator, space: SearchSpace, budget: Budget) -> None:
    """Refuses a size budget below the smallest file the space can reach (every allowed quantizer and runtime
    tried: the file's header names the runtime).

    Raises:
        UsageError: naming the smallest reachable size.
    """
    if budget.size_bytes is None:
        return
    runtimes = space.runtimes if space.searches_runtime else (None,)
    smallest = min(
        evaluator.compress(space.most_compressed(quantizer, runtime), evaluator.refinement()).size_bytes
        for quantizer in space.settings.quantizers
        for runtime in runtimes
    )
    if budget.size_bytes < smallest:
        raise UsageError(
            f"size budget {budget.size_bytes} B is below the smallest file the search space can reach "
            f"({smallest} B); raise --budget-mb to at least {smallest / 1e6:.4f}"
        )


def check_latency(evaluator: Evaluator, space: SearchSpace, budget: Budget) -> LatencyReach | None:
    """Times the baseline and the fastest model the space allows on this machine; refuses a target below the latter.

    The narrowest model is timed on every runtime the space allows, and the fastest counts.

    Returns:
        Both measurements, or ``None`` without a latency target.

    Raises:
        UsageError: one line with the target, the fastest reachable latency, the baseline, and the baseline and
            narrowest model on every other runtime this machine can run (what would reach the target).
    """
    target = budget.latency_ms
    if target is None:
        return None
    task, device = evaluator.task, evaluator.device
    narrowest = _narrowest(evaluator, space)
    allowed = space.runtimes if space.searches_runtime else (device.runtime,)
    timed = {}
    for runtime in allowed:
        try:
            timed[runtime] = evaluator.measure_here(narrowest, runtime=runtime)
        except RuntimeConversionError:
            if runtime == allowed[0]:
                raise
    fastest = min(timed, key=lambda runtime: timed[runtime].ms)
    reach = LatencyReach(evaluator.measure_here(task.model), timed[fastest], fastest if space.searches_runtime else "")
    if reach.fastest.ms <= target:
        return reach
    others = []
    for name, _ in RUNTIMES.items():
        if name in allowed:
            continue
        full, thin = _on_runtime(evaluator, name, task.model), _on_runtime(evaluator, name, narrowest)
        if full is not None and thin is not None:
            others.append(f"{name} {full:.1f} ms (narrowest {thin:.1f} ms)")
    elsewhere = f"; on this machine's other runtimes the full model takes {', '.join(others)}" if others else ""
    raise UsageError(
        f"latency target {target:g} ms is below the fastest model the search space allows on device "
        f"{device.name!r} ({', '.join(allowed)}): {reach.fastest.ms:.1f} ms at the narrowest widths"
        f"{f' on {fastest}' if len(allowed) > 1 else ''}, against "
        f"{reach.baseline.ms:.1f} ms for the full model{elsewhere}; raise --target-latency to at least "
        f"{reach.fastest.ms:.1f}ms, lower space.keep_min, or pick a device profile with a faster runtime"
    )


def _narrowest(evaluator: Evaluator, space: SearchSpace) -> nn.Module:
    """The model of the space's most compressed policy (only its shapes matter for latency)."""
    task = evaluator.task
    return architecture(task.model, space.most_compressed(), task.input_shape, evaluator.device.channel_multiple)


def _on_runtime(evaluator: Evaluator, runtime: str, model: nn.Module) -> float | None:
    """Latency of ``model`` on the device's hardware settings with another runtime; ``None`` where it cannot run."""
    device = evaluator.device.on(runtime)
    try:
        runnable = runnable_for(model, device, evaluator.task.input_shape, evaluator.calibration_inputs)
    except (RuntimeConversionError, ImportError):
        return None
    return measure(runnable, evaluator.task.input_shape, device).ms


NOISY = 0.10
"""Round medians further apart than this fraction of the latency make a machine too noisy to trust one figure."""


def noise_warning(reach: LatencyReach, target_ms: float) -> str | None:
    """One line when timing on this machine is too noisy for the target, else ``None``.

    Too noisy: the full model's round medians differ by :data:`NOISY` or more, or the narrowest model's spread
    is at least half the room between it and the target.
    """
    spread = max(reach.baseline.relative_spread, reach.fastest.relative_spread)
    room = target_ms - reach.fastest.ms
    if spread < NOISY and reach.fastest.spread_ms < room / 2:
        return None
    return (f"latency on this machine varies by {spread:.0%} between timing rounds (full model "
            f"{reach.baseline.ms:.1f} +{reach.baseline.spread_ms:.1f} ms, narrowest {reach.fastest.ms:.1f} "
            f"+{reach.fastest.spread_ms:.1f} ms, target {target_ms:g} ms); candidates near the target are timed "
            "twice, but figures may not reproduce on a quieter machine")


def latency_notes(reach: LatencyReach | None, target_ms: float | None) -> list[str]:
    """report.md lines: the target against the measured baseline and narrowest model, and any noise warning."""
    if reach is None or target_ms is None:
        return []
    on = f" on {reach.runtime}, the fastest of the allowed runtimes" if reach.runtime else ""
    notes = [f"Latency target {target_ms:g} ms = {target_ms / reach.baseline.ms:.0%} of the full model's "
             f"{reach.baseline.ms:.2f} ms (spread {reach.baseline.spread_ms:.2f} ms) on this device; the narrowest "
             f"model the space allows takes {reach.fastest.ms:.2f} ms{on} (timed before the search)"]
    warning = noise_warning(reach, target_ms)
    if warning is not None:
        notes.append(f"Warning: {warning}")
    return notes
