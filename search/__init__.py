"""Automatic compression search: find Pareto-optimal compressed models under a hardware budget.

Python API::

    from search import run_search, load_model, runnable_model
    outcome = run_search(task="lenet5", budget_mb="60KB", searcher="tpe", trials=30)
    model = load_model(outcome.run_dir / outcome.models[0].model_file)
    # a user model's file runs no code it names: load_model(path, model=MyNet()) or factory=MyNet
    runnable = runnable_model(path, calibration=inputs)  # converted for the runtime it was measured on (int8: inputs)

Names are imported lazily, so the leaf modules (``core.policy``, ``core.budget``, ...)
stay importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_search": "search.api",
    "resume_config": "search.api",
    "Budget": "core.budget",
    "DevicesOutcome": "search.devices",
    "parse_latency": "core.budget",
    "parse_size": "core.budget",
    "ExportSettings": "search.export",
    "SearchConfig": "search.config",
    "UsageError": "core.errors",
    "load_model": "search.loading",
    "runnable_model": "search.loading",
    "LayerChoice": "core.policy",
    "Policy": "core.policy",
    "Result": "core.result",
    "RunOutcome": "search.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
