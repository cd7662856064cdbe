"""The Ray Tune driver (``--searcher ray``): trials evaluated in parallel on a Ray cluster.

It wraps :mod:`search.distributed`, whose Ray-importing modules load only when a ``ray`` run starts.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import MappingProxyType

from core.errors import UsageError
from envs.device import DeviceProfile, load_device
from envs.evaluator import Evaluator
from search.archive import Trial
from search.distributed.options import RayOptions, parse_address
from search.drivers.base import Driver, PreparedRun, RunSettings
from search.seeds import learned_seed_of, run_seeds

SEARCHER = "ray"
"""The ``--searcher`` name of the sweep."""


def device_profiles(config: RunSettings) -> list[DeviceProfile]:
    """The device profiles a run measures latency on (``--devices``, else ``--device``)."""
    return [load_device(name) for name in (config.devices or (config.device,))]


class RayTuneDriver(Driver):
    """A Ray Tune sweep: Optuna proposes, ASHA stops weak trials early, latency is timed on the device's node."""

    name = "ray"
    own_settings = MappingProxyType({"workers": 1, "ray_address": None})

    def searchers(self) -> tuple[str, ...]:
        return (SEARCHER,)

    def options_type(self, searcher: str) -> type | None:
        return RayOptions

    def check(self, config: RunSettings) -> None:
        if config.space.latency_fill > 0:
            raise UsageError(f"space.latency_fill is not available with --searcher {SEARCHER}; set it to 0")
        if config.ray_address is not None:
            try:
                parse_address(config.ray_address)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc

    def evaluator_type(self) -> type[Evaluator]:
        """An evaluator that measures latency on the device's Ray node."""
        from search.distributed.latency import RemoteLatencyEvaluator

        return RemoteLatencyEvaluator

    def session(self, config: RunSettings) -> AbstractContextManager[None]:
        """Joins ``--ray-address`` or starts a local cluster with ``workers x threads_per_trial`` CPUs."""
        from search.distributed.session import ray_session

        cpus = config.workers * config.searcher_settings.threads_per_trial
        return ray_session(config.ray_address, device_profiles(config), cpus)

    def check_resume(self, saved: RunSettings, trials: int | None) -> None:
        """The Tune experiment is restored with its own trial total."""
        if trials is not None and trials != saved.trials:
            raise UsageError(f"a {SEARCHER} run resumes its Tune experiment with its own trial total "
                             f"({saved.trials}); start a new run for more trials")

    def search(self, prepared: PreparedRun, run_dir: Path, progress: bool) -> list[Trial]:
        from search.distributed.sweep import SweepJob, sweep

        config = prepared.config
        seeds = ()
        if prepared.space.settings.uniform_seeds:
            seeds = tuple(run_seeds(run_dir, prepared.evaluator, prepared.space, config.budget, config.trials,
                                    learned_seed_of(config)))
        job = SweepJob(prepared.evaluator, prepared.space, config.budget, config.trials, config.seed,
                       config.workers, config.searcher_settings, seeds)
        return sweep(job, run_dir, progress)
