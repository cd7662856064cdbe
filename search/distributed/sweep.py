"""Runs (or restores) the Ray Tune experiment of a run folder and returns its trials."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from core.budget import Budget
from core.errors import UsageError
from core.metric import MetricSpec
from core.policy import Policy
from core.space import SearchSpace
from envs.evaluator import Evaluator
from search.archive import ARCHIVE_FILE, Trial, TrialArchive
from search.distributed.latency import RemoteLatencyEvaluator
from search.distributed.options import RayOptions, fidelity_steps
from search.distributed.optuna_adapter import make_searcher
from search.distributed.recorder import SweepRecorder, TrialQuota
from search.distributed.trial import ACCURACY_KEY, STEPS_KEY, TrialContext, run_trial

EXPERIMENT_DIR = "tune"
"""The Tune experiment inside the run folder (what ``--resume`` restores)."""
ORIGIN_FILE = "tune_origin.json"
"""Where the experiment was created: Tune's pickled state holds absolute paths into the run folder."""
CHECKPOINT_PERIOD_S = "2"
"""Seconds between snapshots of the experiment state (Tune's default adapts from 10 s up)."""


@dataclass(frozen=True)
class SweepJob:
    """What a sweep needs of its run."""

    evaluator: Evaluator
    """Measures candidates (a ``RemoteLatencyEvaluator`` times them on the device's node); its settings'
    ``finetune`` is each trial's fine-tune, at ASHA's fidelities."""
    space: SearchSpace
    """Per-layer choices."""
    budget: Budget
    """Size and latency budget."""
    trials: int
    """Rows the run ends with."""
    seed: int
    """Seed of the sampler."""
    workers: int
    """Trials evaluated at once."""
    options: RayOptions
    """The sweep's settings."""
    seeds: tuple[Policy, ...] = ()
    """Policies evaluated first (``search/seeds.py``)."""

    @property
    def metric(self) -> MetricSpec:
        """The task's metric (trials.csv names its columns after it)."""
        return self.evaluator.task.metric_spec

    @property
    def finetune_steps(self) -> int:
        """Fine-tune steps of a trial at full fidelity."""
        return self.evaluator.settings.finetune.steps


def trial_resources(job: SweepJob) -> dict[str, float]:
    """What each trial asks Ray for: its threads, and a share of a GPU when the compute device is one (the
    workers' trials share it)."""
    resources: dict[str, float] = {"cpu": job.options.threads_per_trial}
    if job.evaluator.compute.type == "cuda":
        resources["gpu"] = 1.0 / max(job.workers, 1)
    return resources


def trial_dirname(trial: tune.experiment.Trial) -> str:
    """Short, unique trial folder names (the default embeds the whole config)."""
    return f"trial-{trial.trial_id}"


def _scheduler(options: RayOptions, finetune_steps: int) -> TrialScheduler:
    fidelities = fidelity_steps(finetune_steps, options)
    if len(fidelities) < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr=STEPS_KEY, metric=ACCURACY_KEY, mode="max", max_t=finetune_steps,
                         grace_period=fidelities[0], reduction_factor=options.reduction_factor)


@contextmanager
def _tune_session(progress: bool) -> Iterator[None]:
    """Tune's start-up settings for the block: frequent state snapshots, its console output off stdout."""
    name, previous = "TUNE_GLOBAL_CHECKPOINT_S", os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ[name] = CHECKPOINT_PERIOD_S
    try:
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _check_origin(run_dir: Path) -> None:
    """Refuses to restore an experiment whose run folder was moved since it was created.

    Raises:
        UsageError: when the folder was moved.
    """
    path = run_dir / ORIGIN_FILE
    origin = json.loads(path.read_text()).get("run_dir") if path.is_file() else None
    if origin is not None and Path(origin) != run_dir.resolve():
        raise UsageError(f"this run's Tune experiment was created in {origin} and Ray's experiment state "
                         "points there; resume it from that folder")


def sweep(job: SweepJob, run_dir: Path, progress: bool) -> list[Trial]:
    """Evaluates the run's remaining trials on the Ray cluster; rows land in ``run_dir/trials.csv``.

    A run folder holding a restorable experiment is resumed with ``Tuner.restore`` (finished
    trials are kept, unfinished ones restarted); otherwise a new experiment evaluates the
    trials still missing from trials.csv.

    Raises:
        UsageError: when the run folder of a restorable experiment was moved.
    """
    options = job.options
    run_dir = run_dir.resolve()
    if isinstance(job.evaluator, RemoteLatencyEvaluator):
        job.evaluator.start_meter()  # before the evaluator is shipped: every trial uses this one meter
    context = TrialContext(job.evaluator, job.budget, fidelity_steps(job.finetune_steps, options),
                           options.threads_per_trial)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(job))
    experiment = run_dir / EXPERIMENT_DIR
    with _tune_session(progress):
        if tune.Tuner.can_restore(experiment):
            _check_origin(run_dir)
            tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True).fit()
        else:
            remaining = job.trials - len(TrialArchive(run_dir / ARCHIVE_FILE, job.budget, job.metric).trials)
            if remaining > 0:
                (run_dir / ORIGIN_FILE).write_text(json.dumps({"run_dir": str(run_dir)}))
                _new_tuner(job, run_dir, trainable, remaining, progress).fit()
    return TrialArchive(run_dir / ARCHIVE_FILE, job.budget, job.metric).trials


def _new_tuner(job: SweepJob, run_dir: Path, trainable: Any, samples: int, progress: bool) -> tune.Tuner:
    options = job.options
    quota = TrialQuota(str(run_dir), job.trials)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(job.space, options, job.seed, job.workers > 1, quota, job.seeds,
                                     job.evaluator.learned_default),
            scheduler=_scheduler(options, job.finetune_steps),
            num_samples=samples,
            max_concurrent_trials=job.workers,
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR,
            storage_path=str(run_dir),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            callbacks=[SweepRecorder(run_dir, job.budget, job.trials, progress, job.metric)],
            verbose=0,
        ),
    )
