"""Conformance suite: every registered Optuna sampler works for the ask/tell searchers and the Ray sweep."""

from __future__ import annotations

import warnings

import optuna
import pytest

from core.registry import UnknownEntryError
from core.space import SearchSpace, SpaceSettings
from search.searchers.optuna_search import TrialSuggest
from search.searchers.samplers import SAMPLERS, SamplerSpec, make_sampler, reseed

SPACE = SearchSpace(("conv1", "conv2", "fc1", "fc2"), ("conv1", "conv2", "fc1"), SpaceSettings())
TRIALS = 24
"""More than TPE's random start-up trials and NSGA-II's first generation."""


@pytest.fixture(params=SAMPLERS.names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def _study(name: str, seed: int, concurrent: bool = False) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize", "minimize"] if SAMPLERS[name].multi_objective else ["maximize"]
    return optuna.create_study(sampler=make_sampler(name, seed, concurrent=concurrent), directions=directions)


def _values(name: str, keep: float, bits: float) -> list[float]:
    accuracy = 0.5 * keep + 0.05 * bits
    return [accuracy, keep * bits, keep] if SAMPLERS[name].multi_objective else [accuracy]


def _drive(name: str, seed: int, concurrent: bool = False, batch: int = 1, reseeding: str = "") -> list[str]:
    """Runs a study over the shared space, ``batch`` trials asked before any is told; returns the policies.

    ``reseeding``: before each ask, ``rebuild`` the sampler or ``reseed`` it in place with a seed that
    depends on the trials so far (as the ask/tell searchers do); empty: neither.
    """
    study, policies = _study(name, seed, concurrent), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while len(policies) < TRIALS:
            step_seed = seed * 1_000_003 + len(policies)
            if reseeding == "rebuild":
                study.sampler = make_sampler(name, step_seed, concurrent=concurrent)
            elif reseeding == "reseed":
                assert reseed(study.sampler, step_seed)
            asked = [study.ask() for _ in range(batch)]
            for trial in asked:
                policy = SPACE.sample(TrialSuggest(trial))
                policies.append(policy.to_json())
                keep = sum(c.keep for _, c in policy) / len(policy)
                bits = sum(c.bits for _, c in policy) / len(policy)
                trial.set_constraint("size", keep * bits - 4.0)
                trial.set_constraint("latency", keep - 0.8)
                study.tell(trial, _values(name, keep, bits))
    return policies


def test_entries_are_sampler_specs(name: str) -> None:
    spec = SAMPLERS[name]
    assert isinstance(spec, SamplerSpec)
    for concurrent in (False, True):
        assert isinstance(make_sampler(name, 0, concurrent=concurrent), optuna.samplers.BaseSampler)


def test_a_seed_fixes_the_proposals(name: str) -> None:
    first = _drive(name, seed=3)
    assert first == _drive(name, seed=3)
    assert first != _drive(name, seed=4)
    assert len(set(first)) > TRIALS // 2


def test_concurrent_trials_are_proposed(name: str) -> None:
    policies = _drive(name, seed=0, concurrent=True, batch=4)
    assert len(policies) == TRIALS and len(set(policies)) > TRIALS // 2


def test_the_ray_sweep_accepts_every_sampler(name: str) -> None:
    from search.distributed.options import RayOptions
    from search.distributed.optuna_adapter import make_searcher

    searcher = make_searcher(SPACE, RayOptions(sampler=name), seed=0, concurrent=True)
    assert all(searcher.suggest(f"t{i}") is not None for i in range(3))


def test_unknown_sampler_names_the_choices() -> None:
    with pytest.raises(UnknownEntryError, match="tpe"):
        make_sampler("cmaes", 0)


def test_reseeding_in_place_proposes_what_a_new_sampler_would(name: str) -> None:
    """The searchers restart the sampler's streams before each ask (resume determinism) without rebuilding it."""
    assert _drive(name, 5, reseeding="reseed") == _drive(name, 5, reseeding="rebuild")
    assert _drive(name, 5, reseeding="reseed") != _drive(name, 6, reseeding="reseed")


def test_a_sampler_without_known_streams_is_not_reseeded() -> None:
    assert not reseed(optuna.samplers.GridSampler({"x": [1, 2]}), 3)
