"""Runs a search end to end: prepare, search, export, report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from core.errors import UsageError
from core.paths import RESULTS_DIR
from core.policy import Policy
from core.space import SearchSpace
from envs.device import DeviceProfile, load_device
from envs.evaluator import Evaluator, LatencyCheck
from envs.runtimes import RuntimeConversionError
from envs.tasks import Task, load_task
from search.archive import Trial, TrialArchive
from search.config import SearchConfig
from search.distributed.options import RAY_SEARCHER
from search.export import ExportedModel, candidates, export_front, write_pareto_csv
from search.latency_fill import latency_fill
from search.report import Baseline, plot_front, write_report
from search.searchers import SEARCHERS, Finished

CONFIG_FILE = "config.yaml"


@dataclass
class Prepared:
    """A task, device, evaluator and search space, ready to search; nothing written yet."""

    config: SearchConfig
    """The run's configuration."""
    task: Task
    """What is compressed."""
    device: DeviceProfile
    """Where latency is measured."""
    evaluator: Evaluator
    """Measures candidates."""
    space: SearchSpace
    """Per-layer choices."""


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


def prepare(config: SearchConfig, progress: bool = False) -> Prepared:
    """Loads (or trains) the task and builds the evaluator; checks that the size budget is reachable.

    Raises:
        UsageError: for bad input, including a size budget below what the methods can reach.
    """
    device = load_device(config.device)
    task = load_task(config.task, model=config.model, weights=config.weights, data=config.data, progress=progress)
    evaluator_type = Evaluator
    if config.searcher == RAY_SEARCHER:  # latency is measured on the device's Ray node
        from search.distributed.latency import RemoteLatencyEvaluator

        evaluator_type = RemoteLatencyEvaluator
    evaluator = evaluator_type(task, device, config.evaluator)
    try:
        evaluator.runnable(task.model)
    except RuntimeConversionError as exc:
        raise UsageError(f"device {device.name!r}: {exc}; choose a device whose runtime is torch") from exc
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), config.space, tuple(evaluator.layers))
    size_budget = config.budget.size_bytes
    if size_budget is not None:
        smallest = min(
            evaluator.compress(space.most_compressed(quantizer), evaluator.refinement()).size_bytes
            for quantizer in config.space.quantizers
        )
        if size_budget < smallest:
            raise UsageError(
                f"size budget {size_budget} B is below the smallest file the search space can reach "
                f"({smallest} B); raise --budget-mb to at least {smallest / 1e6:.4f}"
            )
    return Prepared(config, task, device, evaluator, space)


def check_out(out: Path | None) -> None:
    """Refuses an output folder that exists and is not empty (an earlier run is never touched).

    Raises:
        UsageError: when ``out`` exists and is not empty.
    """
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder {out} already exists and is not empty; use --resume {out} or a new --out")


def new_run_dir(config: SearchConfig, out: Path | None) -> Path:
    """Creates a fresh run folder; never reuses a non-empty one.

    Raises:
        UsageError: when ``out`` exists and is not empty.
    """
    if out is not None:
        check_out(out)
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = RESULTS_DIR / f"{stamp}-{config.task_label}-{config.searcher}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    run_dir.mkdir(parents=True)
    return run_dir


def _best_text(trials: list[Trial]) -> str:
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return "no feasible candidate yet"
    best = max(feasible, key=lambda t: (t.result.val_accuracy, -t.result.size_bytes))
    r = best.result
    return f"best: acc={r.val_accuracy:.4f} size={r.size_bytes / 1e3:.1f}KB lat={r.latency_ms:.1f}ms"


def _search(prepared: Prepared, run_dir: Path, progress: bool) -> list[Trial]:
    config = prepared.config
    if config.searcher == RAY_SEARCHER:
        from search.distributed.sweep import sweep

        return sweep(prepared, run_dir, progress)
    archive = TrialArchive(run_dir / "trials.csv", config.budget)
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
    searcher.restore([Finished(t.policy, t.result) for t in archive.trials])
    fill = None if searcher.bounds_latency else latency_fill(prepared.evaluator, prepared.space, config.budget)
    remaining = max(0, config.trials - len(archive.trials))
    bar = tqdm(total=config.trials, initial=len(archive.trials), desc="search", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    bar.set_postfix_str(_best_text(archive.trials))
    try:
        for _ in range(remaining):
            proposal = searcher.ask()
            policy = proposal.policy if fill is None else fill(proposal.policy)
            result = prepared.evaluator.evaluate(policy)
            archive.append(config.searcher, policy, result)
            searcher.tell(proposal, result)
            bar.update(1)
            bar.set_postfix_str(_best_text(archive.trials))
    finally:
        bar.close()
        searcher.close()
    return archive.trials


def _baseline(prepared: Prepared) -> Baseline:
    evaluator = prepared.evaluator
    compressed = evaluator.compress(Policy(), evaluator.refinement())
    result = evaluator.measure(compressed)
    return Baseline(
        val_accuracy=result.val_accuracy,
        test_accuracy=evaluator.test_accuracy(compressed),
        size_bytes=result.size_bytes,
        latency_ms=result.latency_ms,
        macs=result.macs,
        params=result.params,
    )


def run(prepared: Prepared, run_dir: Path, progress: bool = True) -> RunOutcome:
    """Searches, exports the Pareto front and writes the report into ``run_dir``."""
    config = prepared.config
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    baseline = _baseline(prepared)
    start = time.perf_counter()
    trials = _search(prepared, run_dir, progress)
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
        )
    export_seconds = time.perf_counter() - start
    write_pareto_csv(run_dir / "pareto.csv", models)
    plot_front(run_dir / "pareto.png", trials, models, config.budget)
    device = prepared.device
    write_report(
        run_dir / "report.md",
        title=f"Compression search: {prepared.task.name} with {config.searcher}",
        config_yaml=config.to_yaml(),
        budget=config.budget,
        device_text=f"{device.name} ({device.description or device.runtime}); latency at batch {device.batch}, "
        f"input {tuple(device.input_shape or prepared.task.input_shape)}, {device.threads} thread(s), "
        f"median of {device.repeats}",
        baseline=baseline,
        trials=trials,
        models=models,
        dropped=dropped,
        search_seconds=search_seconds,
        export_seconds=export_seconds,
        latency_checks=prepared.evaluator.latency_checks,
    )
    return RunOutcome(run_dir, trials, models, baseline, prepared.evaluator.latency_checks)
