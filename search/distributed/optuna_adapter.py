"""Ray Tune's OptunaSearch over the shared search space, with the budget as Optuna constraints."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from core.policy import Policy
from core.space import SearchSpace
from search.distributed.options import RayOptions
from search.distributed.recorder import TrialQuota
from search.distributed.trial import ACCURACY_KEY, EXCESS_KEYS, FINAL_KEY, OBJECTIVES, POLICY_KEY
from search.searchers.optuna_search import TrialSuggest
from search.searchers.samplers import SAMPLERS, make_sampler


class SpaceSampler:
    """The shared :class:`SearchSpace` as an Optuna define-by-run function; the trial config gets the policy, naming
    the run's learned method (``export.learned``) when there is one, so the recorded policy is the evaluated one."""

    def __init__(self, space: SearchSpace, learned: str | None = None):
        self.space = space
        self.learned = learned

    def __call__(self, trial: optuna.Trial) -> dict[str, str]:
        policy = self.space.sample(TrialSuggest(trial))
        if self.learned is not None and policy.learned is None:
            policy = replace(policy, learned=self.learned)
        return {POLICY_KEY: policy.to_json()}


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch that marks over-budget results infeasible and early-stopped trials as pruned.

    Budget handling is the ``tpe``/``nsga2`` searchers': each finished trial carries the relative
    size and latency excess as Optuna constraints (feasible when <= 0), which TPE and NSGA-II use to
    prefer feasible candidates; accuracy alone is TPE's objective. A trial stopped by ASHA before the
    full fine-tune is told as pruned (TPE ranks it by its last intermediate accuracy), so a
    low-fidelity accuracy is never mistaken for a full one.

    With a :class:`TrialQuota`, it proposes no trial beyond the run's total: it waits while the
    recorded rows plus its unfinished trials reach the total, and finishes once the rows do.
    """

    def __init__(self, *args: Any, quota: TrialQuota | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._quota = quota

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._quota is not None and trial_id not in self._ot_trials:
            recorded = self._quota.recorded()
            if recorded >= self._quota.total:
                return Searcher.FINISHED
            if recorded + len(set(self._ot_trials) - self._completed_trials) >= self._quota.total:
                return None  # ask again when a running trial has ended
        return super().suggest(trial_id)

    def save(self, checkpoint_path: str) -> None:
        quota = self.__dict__.pop("_quota", None)  # the quota belongs to the session, not the snapshot
        try:
            super().save(checkpoint_path)
        finally:
            self._quota = quota

    def restore(self, checkpoint_path: str) -> None:
        quota = self._quota
        super().restore(checkpoint_path)
        self._quota = quota

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # a trial restarted after a failure reports its first steps again
            warnings.simplefilter("ignore", UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or error or not result:
            super().on_trial_complete(trial_id, result, error)
            return
        if not result.get(FINAL_KEY, True):
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if not ot_trial.constraints:  # a trial re-run after a restore may already carry them
            for name, key in zip(("size", "latency"), EXCESS_KEYS, strict=True):
                ot_trial.set_constraint(name, float(result[key]))
        super().on_trial_complete(trial_id, result, error)


def make_searcher(space: SearchSpace, options: RayOptions, seed: int, concurrent: bool,
                  quota: TrialQuota | None = None, seeds: Sequence[Policy] = (),
                  learned: str | None = None) -> BudgetedOptunaSearch:
    """The sweep's search algorithm: the ``options.sampler`` of :mod:`search.searchers.samplers`, on accuracy
    (e.g. TPE) or, for a multi-objective sampler (e.g. NSGA-II), on (accuracy, size, latency); ``seeds``
    are its first trials (``search/seeds.py``); ``learned`` is the run's learned method, recorded in every policy."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if SAMPLERS[options.sampler].multi_objective:
        metric: str | list[str] = [name for name, _ in OBJECTIVES]
        mode: str | list[str] = [direction for _, direction in OBJECTIVES]
    else:
        metric, mode = ACCURACY_KEY, "max"
    return BudgetedOptunaSearch(space=SpaceSampler(space, learned), metric=metric, mode=mode,
                                sampler=make_sampler(options.sampler, seed, concurrent=concurrent), quota=quota,
                                points_to_evaluate=[space.params(policy) for policy in seeds] or None)
