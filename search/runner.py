"""Runs a prepared search end to end: search (with the config's driver), export, report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.policy import Policy
from envs.evaluator import LatencyCheck
from envs.learned_bases import LearnedBase
from envs.timing import MAX_ROUNDS, MIN_ROUNDS, calls_per_round
from methods.learned import check_learned
from search.archive import Trial
from search.drivers import driver_for
from search.export import ExportedModel, candidates, export_front, reserves, write_pareto_csv
from search.prepared import Prepared
from search.reachability import latency_notes
from search.report import Baseline, plot_front, write_report
from search.run_folder import CONFIG_FILE


@dataclass
class RunOutcome:
    """What a finished run produced."""

    run_dir: Path
    """The run folder."""
    trials: list[Trial]
    """Every candidate of the search."""
    models: list[ExportedModel]
    """The exported Pareto front."""
    baseline: Baseline
    """The uncompressed model's measurements."""
    latency_checks: list[LatencyCheck] = field(default_factory=list)
    """Candidates whose latency was both predicted and measured (with ``evaluator.latency: predicted``)."""


def _baseline(prepared: Prepared) -> Baseline:
    """The user's model as given: no policy, and no learned method even when the run starts from one."""
    evaluator = prepared.evaluator
    compressed = evaluator.compress(Policy(), evaluator.refinement(), from_learned=False)
    result = evaluator.measure(compressed)
    return Baseline(
        val_accuracy=result.val_accuracy,
        test_accuracy=evaluator.test_accuracy(compressed),
        size_bytes=result.size_bytes,
        latency_ms=result.latency_ms,
        macs=result.macs,
        params=result.params,
        metric=prepared.task.metric_spec,
    )


def runtimes_text(prepared: Prepared) -> str:
    """The runtime candidates run on, or the runtimes the search chose among (for report.md's device line)."""
    runtimes = prepared.space.runtimes or (prepared.device.runtime,)
    if len(runtimes) == 1:
        return f"runtime {runtimes[0]}"
    return f"runtime searched per candidate among {', '.join(runtimes)} (default {prepared.device.runtime})"


def run(prepared: Prepared, run_dir: Path, progress: bool = True) -> RunOutcome:
    """Searches, exports the Pareto front and writes the report into ``run_dir``."""
    try:
        return _run(prepared, run_dir, progress)
    finally:
        prepared.evaluator.close()  # ends its timing worker


def _run(prepared: Prepared, run_dir: Path, progress: bool) -> RunOutcome:
    config = prepared.config
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    baseline = _baseline(prepared)
    start = time.perf_counter()
    trials = driver_for(config).search(prepared, run_dir, progress)
    search_seconds = time.perf_counter() - start
    start = time.perf_counter()
    chosen = candidates(trials, config.export.max_models)
    with tqdm(total=len(chosen), desc="final fine-tune + export", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        models, dropped = export_front(
            prepared.evaluator,
            chosen,
            config.budget,
            run_dir,
            settings=config.export,
            seed=config.seed,
            on_step=lambda: bar.update(1),
            spares=reserves(trials, chosen),
        )
    export_seconds = time.perf_counter() - start
    metric = prepared.task.metric_spec
    write_pareto_csv(run_dir / "pareto.csv", models, metric)
    plot_front(run_dir / "pareto.png", trials, models, config.budget, metric)
    device = prepared.device
    write_report(
        run_dir / "report.md",
        title=f"Compression search: {prepared.task.name} with {config.searcher}",
        config_yaml=config.to_yaml(),
        budget=config.budget,
        device_text=f"{device.name} ({device.description or device.runtime}); {runtimes_text(prepared)}; "
        f"latency at batch {device.batch}, "
        f"input {tuple(device.input_shape or prepared.task.input_shape)}, {device.threads} thread(s), "
        f"{MIN_ROUNDS}-{MAX_ROUNDS} timing rounds of {calls_per_round(device)} calls, "
        f"{prepared.evaluator.timing_text()}",
        baseline=baseline,
        trials=trials,
        models=models,
        dropped=dropped,
        search_seconds=search_seconds,
        export_seconds=export_seconds,
        latency_checks=prepared.evaluator.latency_checks,
        latency_notes=latency_notes(prepared.latency_reach, config.budget.latency_ms),
        learned_notes=[learned_note(name, base) for name, base in prepared.evaluator.learned.trained.items()],
    )
    return RunOutcome(run_dir, trials, models, baseline, prepared.evaluator.latency_checks)


def learned_note(name: str, base: LearnedBase) -> str:
    """report.md's line on one learned method's training."""
    if base.outcome.cached:
        trained = f"read from the cache (trained in {base.outcome.seconds:.1f} s by an earlier run)"
    else:
        trained = f"trained once in {base.outcome.seconds:.1f} s (within the times above)"
    if check_learned(name).elastic:
        return f"Once-for-all supernet {name}: {trained}; candidates are its sub-networks (each group's first channels)"
    return (f"Learned sparsity {name}: {trained}, {100 * base.kept_weights:.2f}% of the compressible weights left, "
            f"{sum(base.dead.values())} channels zeroed" + (f", bits read per layer: {base.bits}" if base.bits else ""))
