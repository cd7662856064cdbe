"""Searchers by ``--searcher`` name: every one implements :class:`Searcher` (ask/tell).

A new searcher is one module with a :class:`Searcher` subclass plus one ``SEARCHERS.register`` line below;
``tests/test_searchers.py`` runs every registered one through the ask/tell protocol.
"""

from __future__ import annotations

from core.registry import Registry
from search.searchers.base import Finished, Proposal, Searcher
from search.searchers.optuna_search import NSGA2Searcher, OptunaSearcher
from search.searchers.random_search import RandomSearcher
from search.searchers.recipe_search import RecipeSearcher
from search.searchers.rl import RLSearcher

SEARCHERS: Registry[type[Searcher]] = Registry("searcher")
SEARCHERS.register("random", RandomSearcher)
SEARCHERS.register("tpe", OptunaSearcher)
SEARCHERS.register("optuna", OptunaSearcher)
SEARCHERS.register("nsga2", NSGA2Searcher)
SEARCHERS.register("recipe", RecipeSearcher)
SEARCHERS.register("rl", RLSearcher)
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
