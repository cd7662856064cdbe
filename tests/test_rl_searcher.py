"""The RL searcher with a real evaluator: determinism, feasibility, resume, options, end to end."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.budget import Budget
from core.errors import UsageError
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace, SpaceSettings
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from search.config import SearchConfig
from search.searchers import SEARCHERS, Finished
from search.searchers.rl.agent import LATENCY_FILE, RLOptions, RLSearcher

ROOT = Path(__file__).resolve().parents[1]
FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)
BUDGET = Budget(size_bytes=40_000)
QUICK = RLOptions(warmup_episodes=3, batch_size=8)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST)


def space_of(evaluator: Evaluator) -> SearchSpace:
    """A coarse grid (sparsity step 0.1) keeps the wall's calibration short."""
    settings = SpaceSettings(sparsity_step=0.1)
    return SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings, tuple(evaluator.layers))


def drive(searcher: RLSearcher, evaluator: Evaluator, n: int) -> list[tuple[Policy, Result]]:
    """The runner's loop."""
    history = []
    for _ in range(n):
        proposal = searcher.ask()
        result = evaluator.evaluate(proposal.policy)
        searcher.tell(proposal, result)
        history.append((proposal.policy, result))
    return history


def make(evaluator: Evaluator, seed: int = 0, run_dir: Path | None = None, budget: Budget = BUDGET,
         options: RLOptions = QUICK) -> RLSearcher:
    return RLSearcher(space_of(evaluator), budget, seed, run_dir, evaluator=evaluator, options=options)


def test_same_seed_same_episodes_and_every_episode_feasible(evaluator: Evaluator) -> None:
    first = drive(make(evaluator), evaluator, 7)
    second = drive(make(evaluator), evaluator, 7)
    other = drive(make(evaluator, seed=1), evaluator, 7)
    assert [p.digest() for p, _ in first] == [p.digest() for p, _ in second]
    assert [p.digest() for p, _ in first] != [p.digest() for p, _ in other]
    for _, result in first + other:
        assert result.ok and BUDGET.admits(result.size_bytes, result.latency_ms)
    assert len({p.digest() for p, _ in first}) > 5  # it explores rather than repeating one policy


def test_the_agent_trains_after_warm_up_and_leaves_global_rngs_alone(evaluator: Evaluator) -> None:
    searcher = make(evaluator)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    drive(searcher, evaluator, 5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert searcher.model._n_updates > 0  # noqa: SLF001 - SB3 counts its gradient steps here
    assert searcher.model.replay_buffer.size() == 5 * len(evaluator.layer_names)


def test_restore_continues_bit_exactly_with_latency_calibration(evaluator: Evaluator, tmp_path: Path) -> None:
    budget = Budget(size_bytes=40_000, latency_ms=10.0)
    full = [p.digest() for p, _ in drive(make(evaluator, run_dir=tmp_path / "full", budget=budget), evaluator, 7)]
    (tmp_path / "split").mkdir()  # the same latency calibration as the uninterrupted run (timings are noisy)
    (tmp_path / "split" / LATENCY_FILE).write_text((tmp_path / "full" / LATENCY_FILE).read_text())
    first = make(evaluator, run_dir=tmp_path / "split", budget=budget)
    done = drive(first, evaluator, 4)
    first.close()
    second = make(evaluator, run_dir=tmp_path / "split", budget=budget)
    second.restore([Finished(p, r) for p, r in done])
    rest = [p.digest() for p, _ in drive(second, evaluator, 3)]
    assert [p.digest() for p, _ in done] + rest == full
    assert second.diverged == 0 and second.episodes == 7


def test_restore_learns_from_episodes_it_cannot_reproduce(evaluator: Evaluator) -> None:
    foreign = SEARCHERS["random"](space_of(evaluator), BUDGET, 5)
    finished = [Finished(p.policy, evaluator.evaluate(p.policy)) for p in (foreign.ask() for _ in range(4))]
    searcher = make(evaluator)
    searcher.restore(finished)
    assert searcher.diverged == 4 and searcher.episodes == 4
    assert searcher.model.replay_buffer.size() == 4 * len(evaluator.layer_names)
    assert len(drive(searcher, evaluator, 2)) == 2


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_other_algorithms_run(evaluator: Evaluator, algo: str) -> None:
    searcher = make(evaluator, options=RLOptions(algo=algo, warmup_episodes=1, batch_size=4, mode="bits"))
    for policy, result in drive(searcher, evaluator, 3):
        assert result.ok and all(choice.sparsity == 0 and choice.keep == 1 for _, choice in policy)
    assert searcher.model._n_updates > 0  # noqa: SLF001


def test_ask_and_tell_must_alternate(evaluator: Evaluator) -> None:
    searcher = make(evaluator)
    proposal = searcher.ask()
    with pytest.raises(RuntimeError):
        searcher.ask()
    searcher.tell(proposal, Result.failed("boom"))  # a failed candidate does not stop the agent
    with pytest.raises(RuntimeError):
        searcher.tell(proposal, Result.failed("again"))


def test_options_are_validated() -> None:
    assert RLOptions(net_arch=[32, 16]).net_arch == (32, 16)
    for bad in ({"algo": "ppo"}, {"mode": "quantize"}, {"reward": "accuracy"}, {"noise_decay": 0.0},
                {"macs_fraction": 0.5}, {"budget_sampling": "always"}):
        with pytest.raises(ValueError):
            RLOptions(**bad)
    assert SearchConfig(searcher="rl", searcher_options={"algo": "td3"}).searcher_settings.algo == "td3"
    with pytest.raises(UsageError, match="searcher_options"):
        SearchConfig(searcher="rl", searcher_options={"algorithm": "td3"})


@pytest.mark.slow
def test_search_py_with_the_rl_searcher(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "short_export.yaml"  # the searcher is under test, not the export
    config.write_text("export: {finetune_epochs: 0.25, max_models: 2}\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search.py"), "--searcher", "rl", "--task", "lenet5", "--budget-mb", "60KB",
         "--trials", "8", "--quiet", "--config", str(config), "--out", str(run)],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    with open(run / "trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 8 and {row["searcher"] for row in trials} == {"rl"}
    assert all(row["feasible"] == "True" and int(row["size_bytes"]) <= 60_000 for row in trials)
    with open(run / "pareto.csv", newline="") as handle:
        assert list(csv.DictReader(handle))
    assert (run / "report.md").is_file()


def test_the_agent_chooses_the_runtime_and_resumes_with_each_runtime_latency_curve(
    evaluator: Evaluator, tmp_path: Path
) -> None:
    import json

    device = DeviceProfile(name="test-rl-multi", runtimes=("torch", "torch-int8"), threads=1, batch=8, warmup=1,
                           repeats=3)
    multi = Evaluator(evaluator.task, device)
    settings = SpaceSettings(sparsity_step=0.1)
    space = SearchSpace(tuple(multi.layer_names), tuple(multi.leaders), settings, tuple(multi.layers),
                        runtimes=device.runtimes)
    budget = Budget(size_bytes=40_000, latency_ms=10.0)

    def build(run_dir: Path | None) -> RLSearcher:
        return RLSearcher(space, budget, 0, run_dir, evaluator=multi, options=QUICK)

    full = drive(build(tmp_path / "full"), multi, 5)
    assert all(p.runtime in device.runtimes and r.runtime == p.runtime for p, r in full)
    saved = json.loads((tmp_path / "full" / LATENCY_FILE).read_text())
    assert set(saved) == {"torch", "torch-int8"} and all(len(points) >= 2 for points in saved.values())
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / LATENCY_FILE).write_text((tmp_path / "full" / LATENCY_FILE).read_text())
    first = build(tmp_path / "split")
    done = drive(first, multi, 3)
    first.close()
    second = build(tmp_path / "split")
    second.restore([Finished(p, r) for p, r in done])
    assert [p for p, _ in done + drive(second, multi, 2)] == [p for p, _ in full] and second.diverged == 0
    foreign = SEARCHERS["random"](space, budget, 5)
    finished = [Finished(p.policy, multi.evaluate(p.policy)) for p in (foreign.ask() for _ in range(3))]
    forced = build(None)
    forced.restore(finished)  # replayed as forced actions, the runtime included
    assert forced.diverged == 3 and forced.episodes == 3
