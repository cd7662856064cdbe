"""How a task scores a model: the metric's name and direction, and the higher-is-better score the search ranks by.

Searchers, Pareto fronts and rewards compare *scores* (higher is better); files and tables show the metric's own
*values* under its own name (``val_accuracy``, ``test_bpc``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """A task metric's name and direction."""

    name: str
    """Short name used in column names and tables: ``accuracy``, ``bpc``, ``mse``, ..."""
    higher_is_better: bool
    """Direction: ``True`` for accuracy-like metrics, ``False`` for losses and errors."""
    label: str = ""
    """Human-readable description for reports (the name when empty)."""

    def score(self, value: float) -> float:
        """The higher-is-better score of a metric value (the value itself, or its negation)."""
        return float(value) if self.higher_is_better else -float(value)

    def value(self, score: float) -> float:
        """The metric value of a score (inverse of :meth:`score`)."""
        return float(score) if self.higher_is_better else -float(score)

    def column(self, prefix: str) -> str:
        """A column name such as ``val_accuracy`` or ``test_bpc``."""
        return f"{prefix}_{self.name}"

    def columns(self, names: Iterable[str]) -> list[str]:
        """Column names with ``accuracy`` replaced by this metric's name (``val_accuracy`` -> ``val_bpc``)."""
        return [name.replace("accuracy", self.name) for name in names]

    @property
    def short(self) -> str:
        """The name in narrow table headers and progress bars (``acc`` for accuracy)."""
        return "acc" if self.name == "accuracy" else self.name

    def better(self, a: float, b: float) -> bool:
        """True when metric value ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        return math.isnan(b) or (a > b if self.higher_is_better else a < b)

    @property
    def text(self) -> str:
        """The label, or the name."""
        return self.label or self.name


ACCURACY = MetricSpec("accuracy", True, "top-1 accuracy")
"""Top-1 accuracy: the metric of every classification task."""
