"""The in-process driver: ask the searcher, evaluate the candidate here, tell the result; one at a time."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from core.metric import ACCURACY, MetricSpec
from search.archive import ARCHIVE_FILE, Trial, TrialArchive
from search.budget_repair import BudgetRepair
from search.drivers.base import Driver, PreparedRun
from search.fidelity import Promotion
from search.latency_fill import latency_fill
from search.searchers import SEARCHERS, Finished
from search.seeds import learned_seed_of, run_seeds


def best_text(trials: list[Trial], metric: MetricSpec = ACCURACY) -> str:
    """The progress bar's note: the best-scoring feasible candidate so far."""
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return "no feasible candidate yet"
    best = max(feasible, key=lambda t: (t.result.val_accuracy, -t.result.size_bytes))
    r = best.result
    return (f"best: {metric.short}={metric.value(r.val_accuracy):.4f} size={r.size_bytes / 1e3:.1f}KB "
            f"lat={r.latency_ms:.1f}ms")


class LocalDriver(Driver):
    """Runs every ask/tell searcher of :data:`search.searchers.SEARCHERS` in this process."""

    name = "local"

    def searchers(self) -> tuple[str, ...]:
        return SEARCHERS.names()

    def options_type(self, searcher: str) -> type | None:
        return SEARCHERS[searcher].options_type

    def search(self, prepared: PreparedRun, run_dir: Path, progress: bool) -> list[Trial]:
        """Replays trials.csv into the evaluator and searcher, then asks, evaluates and tells up to the total."""
        config = prepared.config
        archive = TrialArchive(run_dir / ARCHIVE_FILE, config.budget, prepared.task.metric_spec)
        for trial in archive.trials:
            prepared.evaluator.remember(trial.policy, trial.result)
        searcher = SEARCHERS[config.searcher](
            prepared.space,
            config.budget,
            config.seed,
            run_dir,
            evaluator=prepared.evaluator,
            options=config.searcher_settings,
        )
        if prepared.space.settings.uniform_seeds:
            searcher.start_from(run_seeds(run_dir, prepared.evaluator, prepared.space, config.budget, config.trials,
                                         learned_seed_of(config)))
        searcher.restore([Finished(t.policy, t.result) for t in archive.trials])
        fill = None if searcher.bounds_latency else latency_fill(prepared.evaluator, prepared.space, config.budget)
        repair = None
        if prepared.space.settings.budget_repair and not searcher.bounds_latency:
            repair = BudgetRepair(prepared.evaluator, prepared.space, config.budget)
            for trial in archive.trials:
                repair.observe(trial.policy, trial.result)
        promotion = Promotion(prepared.evaluator, config.budget, [t.result for t in archive.trials])
        remaining = max(0, config.trials - len(archive.trials))
        bar = tqdm(total=config.trials, initial=len(archive.trials), desc="search", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix_str(best_text(archive.trials, archive.metric))
        try:
            for _ in range(remaining):
                proposal = searcher.ask()
                policy = proposal.policy if fill is None else fill(proposal.policy)
                policy = prepared.evaluator.with_learned(policy if repair is None else repair(policy))
                result = promotion(policy, prepared.evaluator.evaluate(policy))
                if repair is not None:
                    repair.observe(policy, result)
                archive.append(config.searcher, policy, result)
                searcher.tell(proposal, result)
                bar.update(1)
                bar.set_postfix_str(best_text(archive.trials, archive.metric))
        finally:
            bar.close()
            searcher.close()
        return archive.trials
