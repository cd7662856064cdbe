"""Searcher registry: every searcher implements :class:`Searcher` (ask/tell)."""

from __future__ import annotations

from search.searchers.base import Finished, Proposal, Searcher
from search.searchers.optuna_search import NSGA2Searcher, OptunaSearcher
from search.searchers.random_search import RandomSearcher
from search.searchers.recipe_search import RecipeSearcher
from search.searchers.rl import RLSearcher

SEARCHERS: dict[str, type[Searcher]] = {
    "random": RandomSearcher,
    "tpe": OptunaSearcher,
    "optuna": OptunaSearcher,
    "nsga2": NSGA2Searcher,
    "recipe": RecipeSearcher,
    "rl": RLSearcher,
}
"""Searcher classes by CLI name (``optuna`` is TPE)."""

__all__ = [
    "SEARCHERS",
    "Finished",
    "NSGA2Searcher",
    "OptunaSearcher",
    "Proposal",
    "RandomSearcher",
    "RLSearcher",
    "RecipeSearcher",
    "Searcher",
]
