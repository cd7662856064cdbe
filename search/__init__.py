"""Automatic compression search: find Pareto-optimal compressed models under a hardware budget.

Python API::

    from search import run_search, load_model
    outcome = run_search(task="lenet5", budget_mb="60KB", searcher="tpe", trials=30)
    model = load_model(outcome.run_dir / outcome.models[0].model_file)

Names are imported lazily, so the leaf modules (``search.policy``, ``search.budget``, ...)
stay importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_search": "search.api",
    "resume_config": "search.api",
    "Budget": "search.budget",
    "DevicesOutcome": "search.devices",
    "parse_latency": "search.budget",
    "parse_size": "search.budget",
    "ExportSettings": "search.export",
    "SearchConfig": "search.config",
    "UsageError": "search.errors",
    "load_model": "search.loading",
    "LayerChoice": "search.policy",
    "Policy": "search.policy",
    "Result": "search.result",
    "RunOutcome": "search.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
