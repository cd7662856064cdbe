"""Optuna searchers: TPE with budget constraints, and NSGA-II over (accuracy, size, latency)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace
from search.searchers.base import Finished, Proposal, Searcher
from search.searchers.samplers import make_sampler, reseed
from search.searchers.study_storage import study_storage

STUDY_NAME = "search"
_DIGEST = "policy_digest"


class TrialSuggest:
    """Routes the space's decisions to an Optuna trial."""

    def __init__(self, trial: Trial):
        self._trial = trial

    def float(self, name: str, low: float, high: float, step: float) -> float:
        return round(self._trial.suggest_float(name, low, high, step=step), 6)

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._trial.suggest_categorical(name, list(choices))


class OptunaSearcher(Searcher):
    """An Optuna study driven through ask/tell, journaled in the run folder (``study_storage``)."""

    multi_objective = False

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, run_dir: Path | None = None, **kwargs: Any):
        super().__init__(space, budget, seed, run_dir, **kwargs)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = None if run_dir is None else study_storage(run_dir)
        directions = ["maximize", "minimize", "minimize"] if self.multi_objective else ["maximize"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study = optuna.create_study(
                study_name=STUDY_NAME,
                storage=storage,
                sampler=self._sampler(seed),
                directions=directions,
                load_if_exists=True,
            )

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return make_sampler("tpe", seed)

    def start_from(self, policies: Sequence[Policy]) -> None:
        """Enqueues ``policies`` as the study's first trials; a resumed study holds them already."""
        if self.study.get_trials(deepcopy=False):
            return
        for policy in policies:
            self.study.enqueue_trial(self.space.params(policy))

    def ask(self) -> Proposal:
        # A sampler seeded by (seed, trials so far) makes every proposal a function of the stored
        # history alone, so a resumed study proposes exactly what an uninterrupted one would.
        seed = self.seed * 1_000_003 + len(self.study.get_trials(deepcopy=False))
        if not reseed(self.study.sampler, seed):
            self.study.sampler = self._sampler(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask()
        policy = self.space.sample(TrialSuggest(trial))
        trial.set_user_attr(_DIGEST, policy.digest())
        return Proposal(policy, handle=trial)

    def tell(self, proposal: Proposal, result: Result) -> None:
        self._tell(proposal.handle, result)

    def _tell(self, trial: Trial, result: Result) -> None:
        if not result.ok:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        size_excess, latency_excess = self.budget.violations(result.size_bytes, result.latency_ms)
        trial.set_constraint("size", size_excess)
        trial.set_constraint("latency", latency_excess)
        if self.multi_objective:
            values = [result.val_accuracy, float(result.size_bytes), result.latency_ms]
        else:
            values = [result.val_accuracy]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.tell(trial, values)

    def restore(self, finished: Sequence[Finished]) -> None:
        """Completes trials left running by a killed session from the archive, or fails them."""
        by_digest = {item.policy.digest(): item.result for item in finished}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            result = by_digest.get(trial.user_attrs.get(_DIGEST, ""))
            live = Trial(self.study, trial._trial_id)  # noqa: SLF001 - reattach to a trial left running
            self._tell(live, result if result is not None else Result.failed("interrupted"))


class NSGA2Searcher(OptunaSearcher):
    """NSGA-II on (accuracy up, size down, latency down) with the budgets as constraints."""

    multi_objective = True

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return make_sampler("nsga2", seed)
