"""Optuna samplers by name: the one place their settings live.

The ``tpe`` and ``nsga2`` searchers (ask/tell in this process) and the Ray sweep's ``sampler``
option both build their sampler with :func:`make_sampler`. A new sampler is one builder function
plus one ``SAMPLERS.register`` line; tests/test_samplers.py checks every registered one, and the Ray
sweep accepts it as ``searcher_options: {sampler: NAME}``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from core.registry import Registry

STARTUP_TRIALS = 10
"""Random trials before TPE models the history."""
POPULATION = 20
"""NSGA-II population size."""


@dataclass(frozen=True)
class SamplerSpec:
    """How one Optuna sampler is built, and what it optimises."""

    build: Callable[[int, bool], optuna.samplers.BaseSampler]
    """``(seed, concurrent) -> sampler``; ``concurrent``: trials are asked before earlier ones are told."""
    multi_objective: bool = False
    """True: it optimises (accuracy, size, latency) together; False: accuracy alone. Both read the budget
    from the trials' constraints."""


def _tpe(seed: int, concurrent: bool) -> optuna.samplers.BaseSampler:
    """Multivariate TPE; a constant liar when trials run concurrently."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP_TRIALS,
                                      constant_liar=concurrent)


def _nsga2(seed: int, concurrent: bool) -> optuna.samplers.BaseSampler:
    """NSGA-II (concurrent trials need nothing special: a generation is asked before it is told)."""
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=POPULATION)


SAMPLERS: Registry[SamplerSpec] = Registry("Optuna sampler")
"""Optuna samplers by name."""
SAMPLERS.register("tpe", SamplerSpec(_tpe))
SAMPLERS.register("nsga2", SamplerSpec(_nsga2, multi_objective=True))


def reseed(sampler: optuna.samplers.BaseSampler, seed: int) -> bool:
    """Restarts ``sampler``'s random streams where a sampler built with ``seed`` starts them, in place.

    The streams are the ones Optuna's own ``reseed_rng`` restarts (its RNG and its fallback random
    sampler's); the sampler keeps its caches (TPE's search space), which a new sampler would rebuild
    from every trial. Returns False, changing nothing, when the sampler does not have them: build a new
    one with the seed instead.
    """
    fallback = getattr(sampler, "_random_sampler", None)
    streams = [getattr(sampler, "_rng", None), getattr(fallback, "_rng", None)]
    if not all(hasattr(stream, "rng") for stream in streams):
        return False
    for stream in streams:
        stream.rng.seed(seed)
    return True


def make_sampler(name: str, seed: int, *, concurrent: bool = False) -> optuna.samplers.BaseSampler:
    """The sampler registered as ``name``, seeded with ``seed``.

    Raises:
        UnknownEntryError: for a name that is not registered (a ValueError naming the choices).
    """
    spec = SAMPLERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return spec.build(seed, concurrent)
