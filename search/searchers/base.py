"""The ask/tell interface that every searcher implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace


@dataclass(frozen=True)
class Proposal:
    """A candidate handed out by :meth:`Searcher.ask`."""

    policy: Policy
    """The per-layer choices to evaluate."""
    handle: Any = field(default=None, compare=False)
    """Searcher-private state (e.g. an Optuna trial)."""


@dataclass(frozen=True)
class Finished:
    """A candidate evaluated in an earlier session, replayed on resume."""

    policy: Policy
    """Its policy."""
    result: Result
    """What was measured."""


class Searcher(ABC):
    """Proposes policies and learns from their results.

    Subclasses implement :meth:`ask` and :meth:`tell`; :meth:`restore` and :meth:`close`
    are no-op hooks.
    """

    options_type: type | None = None
    """Dataclass of this searcher's own settings (``searcher_options`` in the config), if any."""
    bounds_latency: bool = False
    """True when the searcher keeps its own proposals within the latency target (no latency fill is applied)."""

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int,
        run_dir: Path | None = None,
        *,
        evaluator: Any = None,
        options: Any = None,
    ):
        """Args:
        space: per-layer choices to search.
        budget: size and latency budget.
        seed: random seed.
        run_dir: run folder for the searcher's own state (e.g. an Optuna study).
        evaluator: the run's :class:`envs.evaluator.Evaluator`, for searchers that model the task.
        options: an instance of :attr:`options_type` (``None`` = its defaults).
        """
        self.space = space
        self.budget = budget
        self.seed = seed
        self.run_dir = run_dir
        self.evaluator = evaluator
        if options is None and self.options_type is not None:
            options = self.options_type()
        self.options = options

    @abstractmethod
    def ask(self) -> Proposal:
        """The next candidate to evaluate."""

    @abstractmethod
    def tell(self, proposal: Proposal, result: Result) -> None:
        """Reports what ``proposal`` measured."""

    def start_from(self, policies: Sequence[Policy]) -> None:
        """Makes ``policies`` (the run's uniform seeds, ``search/seeds.py``) the first proposals, in order.

        Called once, before :meth:`restore` and the first :meth:`ask`, with the same policies when a run
        resumes. This default queues them for :meth:`next_seed`; a searcher whose :meth:`ask` does not
        consult it overrides this method.
        """
        self._seeds = list(policies)

    def next_seed(self) -> Policy | None:
        """The next queued seed policy (removed from the queue), or ``None`` when none is left."""
        seeds = getattr(self, "_seeds", None)
        return seeds.pop(0) if seeds else None

    def restore(self, finished: Sequence[Finished]) -> None:  # noqa: B027 - optional hook
        """Brings the searcher to the state after ``finished`` (called once, before the first ask)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases resources."""

    def feasible(self, result: Result) -> bool:
        """True for a successful result within budget."""
        return result.ok and self.budget.admits(result.size_bytes, result.latency_ms)
