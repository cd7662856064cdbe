"""Conformance suite: every registered searcher passes the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace, SpaceSettings
from search.searchers import SEARCHERS, Finished, Searcher

SPACE = SearchSpace(("conv1", "conv2", "fc1", "fc2"), ("conv1", "conv2", "fc1"), SpaceSettings())
BUDGET = Budget(size_bytes=40_000, latency_ms=6.0)


def synthetic(policy: Policy) -> Result:
    """A cheap analytic stand-in for the evaluator: size and error grow in opposite directions."""
    size = sum((1 - c.sparsity) * c.keep * c.bits * 2_000 for _, c in policy)
    error = sum(c.sparsity**3 + (0.3 if c.bits <= 2 else 0.0) + (1 - c.keep) ** 2 for _, c in policy) / 8
    latency = 2.0 + 6.0 * sum(c.keep for _, c in policy) / len(policy)
    if policy["fc2"].bits == 3 and policy["fc2"].sparsity > 0.9:
        return Result.failed("synthetic failure")
    return Result(val_accuracy=1 - error, size_bytes=int(size) + 100, latency_ms=latency)


def make(name: str, tmp_path: Path, seed: int = 0) -> Searcher:
    return SEARCHERS[name](SPACE, BUDGET, seed, tmp_path)


def drive(searcher: Searcher, n: int) -> list[tuple[Policy, Result]]:
    history = []
    for _ in range(n):
        proposal = searcher.ask()
        result = synthetic(proposal.policy)
        searcher.tell(proposal, result)
        history.append((proposal.policy, result))
    return history


NEEDS_A_TASK = {"recipe"}  # proposes a task's fixed policy; covered in test_recipes.py
UNIQUE = sorted(set({cls: name for name, cls in sorted(SEARCHERS.items(), reverse=True)}.values()) - NEEDS_A_TASK)


@pytest.fixture(params=UNIQUE)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_proposals_lie_in_the_space(name: str, tmp_path: Path) -> None:
    for policy, _ in drive(make(name, tmp_path), 15):
        assert {layer for layer, _ in policy} == set(SPACE.layers)
        for layer, choice in policy:
            assert choice.bits in SPACE.settings.bits
            assert 0.0 <= choice.sparsity <= SPACE.settings.sparsity_max + 1e-9
            assert SPACE.settings.keep_min - 1e-9 <= choice.keep <= 1.0
            if layer not in SPACE.leaders:
                assert choice.keep == 1.0


def test_same_seed_same_proposals(name: str, tmp_path: Path) -> None:
    first = [p.digest() for p, _ in drive(make(name, tmp_path / "a"), 14)]
    second = [p.digest() for p, _ in drive(make(name, tmp_path / "b"), 14)]
    third = [p.digest() for p, _ in drive(make(name, tmp_path / "c", seed=1), 14)]
    assert first == second
    assert first != third


def test_failed_results_do_not_stop_the_searcher(name: str, tmp_path: Path) -> None:
    searcher = make(name, tmp_path)
    proposal = searcher.ask()
    searcher.tell(proposal, Result.failed("boom"))
    assert len(drive(searcher, 3)) == 3


def test_restore_continues_the_same_sequence(name: str, tmp_path: Path) -> None:
    """A searcher rebuilt from the run folder and the archive proposes what an uninterrupted one would."""
    uninterrupted = [p.digest() for p, _ in drive(make(name, tmp_path / "full"), 16)]
    first = make(name, tmp_path / "split")
    done = drive(first, 12)
    first.close()
    second = make(name, tmp_path / "split")
    second.restore([Finished(p, r) for p, r in done])
    rest = [p.digest() for p, _ in drive(second, 4)]
    assert [p.digest() for p, _ in done] + rest == uninterrupted


def test_every_searcher_finds_feasible_candidates(name: str, tmp_path: Path) -> None:
    history = drive(make(name, tmp_path), 25)
    feasible = [r.val_accuracy for _, r in history if r.ok and BUDGET.admits(r.size_bytes, r.latency_ms)]
    assert feasible, "no feasible candidate in 25 trials"


def test_optuna_alias_is_tpe() -> None:
    assert SEARCHERS["optuna"] is SEARCHERS["tpe"]
