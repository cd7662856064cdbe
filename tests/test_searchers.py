"""Conformance suite: every registered searcher passes the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.budget import Budget
from core.errors import UsageError
from core.policy import LayerChoice, Policy
from core.result import Result
from core.space import SearchSpace, SpaceSettings
from search.searchers import SEARCHERS, Finished, OptunaSearcher, Searcher
from search.searchers.study_storage import JOURNAL_FILE, LEGACY_FILE

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


SEEDS = [
    Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=bits, keep=0.75 if name in SPACE.leaders else 1.0)
                         for name in SPACE.layers})
    for bits in (8, 4)
]


def test_seed_policies_are_the_first_proposals(name: str, tmp_path: Path) -> None:
    searcher = make(name, tmp_path)
    searcher.start_from(SEEDS)
    history = drive(searcher, 5)
    assert [policy for policy, _ in history[:2]] == SEEDS
    assert all(policy not in SEEDS for policy, _ in history[2:])


def test_a_seeded_search_resumes_into_the_same_sequence(name: str, tmp_path: Path) -> None:
    full = make(name, tmp_path / "full")
    full.start_from(SEEDS)
    uninterrupted = [p.digest() for p, _ in drive(full, 8)]
    for cut in (1, 5):  # inside the seeds, and after them
        first = make(name, tmp_path / f"split{cut}")
        first.start_from(SEEDS)
        done = drive(first, cut)
        first.close()
        second = make(name, tmp_path / f"split{cut}")
        second.start_from(SEEDS)
        second.restore([Finished(p, r) for p, r in done])
        rest = [p.digest() for p, _ in drive(second, 8 - cut)]
        assert [p.digest() for p, _ in done] + rest == uninterrupted, f"resumed after {cut}"


def test_optuna_alias_is_tpe() -> None:
    assert SEARCHERS["optuna"] is SEARCHERS["tpe"]


OPTUNA = [name for name in UNIQUE if issubclass(SEARCHERS[name], OptunaSearcher)]


def _resumed(name: str, run_dir: Path, done: list[tuple[Policy, Result]], more: int) -> list[str]:
    """Digests proposed by a searcher reopened on ``run_dir`` after ``done``, then driven ``more`` times."""
    second = make(name, run_dir)
    second.restore([Finished(p, r) for p, r in done])
    return [p.digest() for p, _ in drive(second, more)]


@pytest.mark.parametrize("name", OPTUNA)
def test_a_trial_killed_between_ask_and_tell_is_told_on_resume(name: str, tmp_path: Path) -> None:
    """The archive holds a result the study never heard of (killed after trials.csv, before tell).

    26 trials: NSGA-II's second generation (from trial 20) breeds from the first, the killed trial included.
    """
    uninterrupted = [p.digest() for p, _ in drive(make(name, tmp_path / "full"), 26)]
    first = make(name, tmp_path / "split")
    done = drive(first, 11)
    proposal = first.ask()
    done.append((proposal.policy, synthetic(proposal.policy)))
    del first  # no tell, no close: as after SIGKILL
    assert [p.digest() for p, _ in done] + _resumed(name, tmp_path / "split", done, 14) == uninterrupted


@pytest.mark.parametrize("name", OPTUNA)
def test_a_journal_line_torn_by_a_crash_is_dropped(name: str, tmp_path: Path) -> None:
    uninterrupted = [p.digest() for p, _ in drive(make(name, tmp_path / "full"), 16)]
    done = drive(make(name, tmp_path / "split"), 12)
    journal = tmp_path / "split" / JOURNAL_FILE
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial')
    assert [p.digest() for p, _ in done] + _resumed(name, tmp_path / "split", done, 4) == uninterrupted
    assert journal.read_bytes().startswith(whole)


@pytest.mark.parametrize("name", OPTUNA)
def test_run_folders_with_a_sqlite_study_keep_resuming_from_it(name: str, tmp_path: Path) -> None:
    uninterrupted = [p.digest() for p, _ in drive(make(name, tmp_path / "full"), 16)]
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_FILE).touch()  # an empty file is an empty SQLite database: the study goes there
    done = drive(make(name, old), 12)
    assert not (old / JOURNAL_FILE).exists()
    assert [p.digest() for p, _ in done] + _resumed(name, old, done, 4) == uninterrupted


def test_a_damaged_journal_is_a_usage_error(tmp_path: Path) -> None:
    drive(make("tpe", tmp_path), 2)
    with open(tmp_path / JOURNAL_FILE, "ab") as handle:
        handle.write(b"not json\n")
    with pytest.raises(UsageError, match="line .* is not a study journal entry"):
        make("tpe", tmp_path)


def test_proposals_choose_among_the_allowed_runtimes(name: str, tmp_path: Path) -> None:
    space = SearchSpace(SPACE.layers, SPACE.leaders, SPACE.settings, runtimes=("torch", "torch-int8", "onnxruntime"))
    searcher = SEARCHERS[name](space, BUDGET, 0, tmp_path)
    runtimes = []
    for _ in range(15):
        proposal = searcher.ask()
        runtimes.append(proposal.policy.runtime)
        searcher.tell(proposal, synthetic(proposal.policy))
    searcher.close()
    assert set(runtimes) <= set(space.runtimes) and len(set(runtimes)) > 1
