"""Uniform random search over the grid of per-layer choices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.budget import Budget
from core.result import Result
from core.space import SearchSpace
from search.searchers.base import Finished, Proposal, Searcher


class _RandomSuggest:
    """Draws each decision uniformly from its grid."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng

    def float(self, name: str, low: float, high: float, step: float) -> float:
        count = int(round((high - low) / step))
        return round(low + step * int(self._rng.integers(0, count + 1)), 6)

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return choices[int(self._rng.integers(0, len(choices)))]


class RandomSearcher(Searcher):
    """Samples every per-layer choice independently and uniformly; seeded."""

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, run_dir: Path | None = None, **kwargs: Any):
        super().__init__(space, budget, seed, run_dir, **kwargs)
        self._suggest = _RandomSuggest(np.random.default_rng(seed))

    def ask(self) -> Proposal:
        seed = self.next_seed()
        return Proposal(seed if seed is not None else self.space.sample(self._suggest))

    def tell(self, proposal: Proposal, result: Result) -> None:
        """Random search does not learn."""

    def restore(self, finished: Sequence[Finished]) -> None:
        """Replays the generator past the candidates already evaluated."""
        for _ in finished:
            self.ask()
