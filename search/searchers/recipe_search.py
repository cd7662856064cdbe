"""A fixed, named policy (a recipe) as a searcher: it proposes the same candidate every time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.budget import Budget
from core.errors import UsageError
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace
from search.recipes import recipe_policy
from search.searchers.base import Proposal, Searcher


@dataclass(frozen=True)
class RecipeOptions:
    """Which recipe to run."""

    name: str = "deep-compression"
    """Recipe name in configs/recipes/."""


class RecipeSearcher(Searcher):
    """Proposes the recipe's policy for the run's task (needs the evaluator to know the task)."""

    options_type = RecipeOptions

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, run_dir: Path | None = None, **kwargs: Any):
        super().__init__(space, budget, seed, run_dir, **kwargs)
        if self.evaluator is None:
            raise UsageError("the recipe searcher needs a task")
        self.policy = recipe_policy(self.options.name, self.evaluator.task.name, space.layers)

    def start_from(self, policies: Sequence[Policy]) -> None:
        """A recipe is one fixed policy: it evaluates nothing else."""

    def ask(self) -> Proposal:
        return Proposal(self.policy)

    def tell(self, proposal: Proposal, result: Result) -> None:
        """A recipe does not learn."""
