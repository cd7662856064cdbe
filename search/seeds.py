"""Uniform seed policies: the strong simple policies a space contains, scaled to the run's budget.

A search should never return less than a uniform policy would have given. Every searcher therefore
evaluates these first (``Searcher.start_from``): one policy per runtime the space may choose and seed code
width (8 and 4 bits where the space allows them), each with

- the **widest uniform channel keep ratio** whose architecture, run on the device on that runtime, meets the
  latency target (bisection over the keep grid on measured latencies: the same measurement the candidates get);
- the **least uniform fine-grained sparsity** whose real packed file fits the size budget (bisection over
  the sparsity grid on exact packed bytes, no fine-tune).

A width at which no sparsity fits, or no width meets the target, gives no seed. With a learned-sparsity method
for the export (``export.learned``), the run also starts from what that method learned (:func:`learned_seed`):
its per-layer sparsity, kept channels and, where it reads them, bits, on the space's grids. The seeds of a run
are written to its folder (``seeds.json``) the first time, and read back when it resumes, so a resumed search
replays exactly the same first proposals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.budget import Budget
from core.policy import FP32_BITS, LayerChoice, Policy
from core.space import SearchSpace
from envs.evaluator import Evaluator
from methods.pipeline import architecture

SEEDS_FILE = "seeds.json"
"""The run's seed policies, in its folder."""
SEED_BITS = (8, 4)
"""Code widths of the seeds, where the space allows them (else its widest coded width, else fp32)."""


def seed_bits(space: SearchSpace) -> tuple[int, ...]:
    """The code widths that get a seed in ``space``."""
    allowed = space.settings.bits
    chosen = tuple(bits for bits in SEED_BITS if bits in allowed)
    if chosen:
        return chosen
    coded = [bits for bits in allowed if bits != FP32_BITS]
    return (max(coded),) if coded else (FP32_BITS,)


def uniform_policy(space: SearchSpace, bits: int, keep: float = 1.0, sparsity: float = 0.0,
                   runtime: str | None = None) -> Policy:
    """Every layer with ``bits`` and ``sparsity``; every channel-group leader with ``keep``; run on ``runtime``
    (``None``: the device's default, where the space does not search the runtime)."""
    quantizer = space.settings.quantizers[0]
    keeps = space.leaders if space.searches_keep else ()
    return Policy.from_choices(
        {
            name: LayerChoice(sparsity=sparsity, bits=bits, keep=keep if name in keeps else 1.0, quantizer=quantizer)
            for name in space.layers
        },
        space.settings.saliencies[0],
        space.settings.channel_importances[0],
        runtime,
    )


def _grid(low: float, high: float, step: float) -> list[float]:
    count = int(round((high - low) / step))
    return [round(low + i * step, 6) for i in range(count + 1)]


def _last_true(values: list[float], test: Callable[[float], bool]) -> float | None:
    """The last of ``values`` passing ``test``, by bisection (``test`` assumed true up to some point, false after)."""
    low, high = -1, len(values)  # values[low] passes (or none), values[high] fails (or none)
    while high - low > 1:
        mid = (low + high) // 2
        if test(values[mid]):
            low = mid
        else:
            high = mid
    return values[low] if low >= 0 else None


def widest_keep(evaluator: Evaluator, space: SearchSpace, target_ms: float | None,
                runtime: str | None = None) -> float | None:
    """The widest uniform keep ratio on the keep grid whose measured latency on ``runtime`` meets ``target_ms``
    (1 without one).

    Returns ``None`` when even the narrowest misses the target.
    """
    if target_ms is None or not space.searches_keep:
        return 1.0
    task = evaluator.task

    def fast_enough(keep: float) -> bool:
        model = architecture(task.model, uniform_policy(space, FP32_BITS, keep), task.input_shape,
                             evaluator.device.channel_multiple)
        return evaluator.latency(model, runtime=runtime).ms <= target_ms

    return _last_true(_grid(*space.keep_grid()), fast_enough)


def least_sparsity(evaluator: Evaluator, space: SearchSpace, bits: int, keep: float,
                   size_bytes: int | None) -> float | None:
    """The smallest uniform sparsity on the space's grid whose packed file fits ``size_bytes`` (0 without one).

    Returns ``None`` when even the space's highest sparsity does not fit.
    """
    refinement = evaluator.refinement()

    def fits(sparsity: float) -> bool:
        policy = uniform_policy(space, bits, keep, sparsity)
        return evaluator.compress(policy, refinement, verify=False).size_bytes <= size_bytes

    if size_bytes is None or fits(0.0):
        return 0.0
    step = space.settings.sparsity_step
    highest = round(int(space.settings.sparsity_max / step + 1e-9) * step, 6)
    descending = [value for value in _grid(0.0, highest, step) if value > 0][::-1]
    return _last_true(descending, fits)  # fits from the highest sparsity down to the least that fits


def uniform_seeds(evaluator: Evaluator, space: SearchSpace, budget: Budget) -> list[Policy]:
    """The run's uniform seed policies (see the module docstring); possibly none."""
    seeds = []
    for runtime in space.runtimes if space.searches_runtime else (None,):
        keep = widest_keep(evaluator, space, budget.latency_ms, runtime)
        if keep is None:
            continue
        for bits in seed_bits(space):
            sparsity = least_sparsity(evaluator, space, bits, keep, budget.size_bytes)
            if sparsity is not None:
                seeds.append(uniform_policy(space, bits, keep, sparsity, runtime))
    return list(dict.fromkeys(seeds))


def _down(value: float, low: float, high: float, step: float) -> float:
    """``value`` rounded down to the grid ``low, low + step, ..., high`` (clamped to it)."""
    snapped = low + step * math.floor((value - low) / step + 1e-9)
    return round(min(high, max(low, snapped)), 6)


def learned_seed(evaluator: Evaluator, space: SearchSpace, learned: str) -> Policy:
    """The policy a learned-sparsity method points to, on the space's grids, naming the method: each layer's
    sparsity is the fraction of its weights the method zeroed (rounded down), each group leader's keep the
    fraction of its channels it left (rounded down, where the space searches keep), and its bits those the
    method read (the nearest allowed width, else the space's widest coded width). Trains the method if needed."""
    base = evaluator.learned.base(learned)
    settings = space.settings
    coded = [bits for bits in settings.bits if bits != FP32_BITS] or [FP32_BITS]
    floored = evaluator.learned.floored(Policy(learned=learned))
    choices = {}
    for name in space.layers:
        params = [base.model.get_parameter(key) for key in evaluator.learned.layer_keys[name]]
        zeros = sum(int((p == 0).sum()) for p in params) / max(1, sum(p.numel() for p in params))
        sparsity = _down(zeros, 0.0, settings.sparsity_max, settings.sparsity_step)
        learned_bits = base.bits.get(name)
        bits = min(coded, key=lambda b: abs(b - learned_bits)) if learned_bits else max(coded)
        keep = 1.0
        if space.searches_keep and name in space.leaders:
            keep = _down(floored[name].keep, *space.keep_grid())
        choices[name] = LayerChoice(sparsity=sparsity, bits=bits, keep=keep, quantizer=settings.quantizers[0])
    return Policy.from_choices(choices, settings.saliencies[0], settings.channel_importances[0], learned=learned)


def learned_seed_of(config: Any) -> str | None:
    """The learned method a run's searchers start from: ``export.learned`` unless ``space.learned_seed`` is off."""
    return config.export.learned if config.space.learned_seed else None


SEED_SHARE = 0.2
"""Seeds take at most this share of a run's candidates (at least 2), the widest kept first."""


def seed_limit(trials: int) -> int:
    """How many seeds a run of ``trials`` candidates evaluates."""
    return max(2, int(SEED_SHARE * trials))


def widest_first(seeds: list[Policy], limit: int) -> list[Policy]:
    """At most ``limit`` of ``seeds``: the most channels kept first, then the widest codes (stable otherwise)."""
    def width(policy: Policy) -> tuple[float, float]:
        choices = [choice for _, choice in policy]
        return (sum(c.keep for c in choices) / len(choices), sum(c.bits for c in choices) / len(choices))

    return sorted(seeds, key=width, reverse=True)[:limit]


def run_seeds(run_dir: Path, evaluator: Evaluator, space: SearchSpace, budget: Budget,
              trials: int | None = None, learned: str | None = None) -> list[Policy]:
    """The seeds saved in ``run_dir``, or the run's seeds computed now and saved there (at most
    :func:`seed_limit` of ``trials`` when given: with the runtime searched there is a seed per runtime and width),
    the :func:`learned_seed` of ``learned`` first when given."""
    path = run_dir / SEEDS_FILE
    if path.is_file():
        return [Policy.from_dict(item) for item in json.loads(path.read_text())]
    seeds = uniform_seeds(evaluator, space, budget)
    if trials is not None:
        seeds = widest_first(seeds, seed_limit(trials) - (learned is not None))
    if learned is not None:
        seeds.insert(0, learned_seed(evaluator, space, learned))
    path.write_text(json.dumps([policy.to_dict() for policy in seeds], indent=1) + "\n")
    return seeds
