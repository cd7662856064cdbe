"""trials.csv: every evaluated candidate, appended and flushed one row at a time.

A row is handed to the operating system before ``append`` returns, so a killed search keeps every
finished trial. Rows are not fsynced (about 5 ms each, 3% of a LeNet-5 candidate): a power cut may
lose the last ones, as it may the last entries of the Optuna study's journal.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.budget import Budget
from core.metric import ACCURACY, MetricSpec
from core.policy import Policy
from core.result import Result

ARCHIVE_FILE = "trials.csv"
"""The trial archive's file name in a run folder (same format for every searcher)."""
COLUMNS = [
    "trial",
    "searcher",
    "policy_digest",
    "status",
    "val_accuracy",
    "size_bytes",
    "latency_ms",
    "latency_spread_ms",
    "runtime",
    "macs",
    "params",
    "nonzero_weights",
    "feasible",
    "finetune_steps",
    "screen_accuracy",
    "seconds",
    "error",
    "policy",
]


@dataclass(frozen=True)
class Trial:
    """One row of trials.csv."""

    number: int
    """Order of evaluation, from 0."""
    searcher: str
    """Searcher that proposed it."""
    policy: Policy
    """The candidate."""
    result: Result
    """What was measured."""
    feasible: bool
    """Successful and within budget."""


def _row(trial: Trial, metric: MetricSpec) -> dict[str, Any]:
    result = trial.result
    return {
        "trial": trial.number,
        "searcher": trial.searcher,
        "policy_digest": trial.policy.digest(),
        "status": result.status,
        metric.column("val"): metric.value(result.val_accuracy),
        "size_bytes": result.size_bytes,
        "latency_ms": result.latency_ms,
        "latency_spread_ms": result.latency_spread_ms,
        "runtime": result.runtime or trial.policy.runtime or "",
        "macs": result.macs,
        "params": result.params,
        "nonzero_weights": result.nonzero_weights,
        "feasible": trial.feasible,
        "finetune_steps": result.finetune_steps,
        metric.column("screen"): metric.value(result.screen_accuracy),
        "seconds": round(result.seconds, 4),
        "error": result.error.replace("\n", " ")[:500],
        "policy": trial.policy.to_json(),
    }


def _trial(row: dict[str, str], metric: MetricSpec) -> Trial:
    result = Result(
        status=row["status"],
        val_accuracy=metric.score(float(row[metric.column("val")])),
        size_bytes=int(row["size_bytes"]),
        latency_ms=float(row["latency_ms"]),
        latency_spread_ms=float(row.get("latency_spread_ms") or "nan"),  # absent in earlier run folders
        macs=int(row["macs"]),
        params=int(row["params"]),
        nonzero_weights=int(row["nonzero_weights"]),
        seconds=float(row["seconds"]),
        error=row["error"],
        finetune_steps=int(row.get("finetune_steps") or 0),  # absent in earlier run folders
        screen_accuracy=metric.score(float(row.get(metric.column("screen")) or "nan")),
        runtime=row.get("runtime") or "",
    )
    return Trial(
        number=int(row["trial"]),
        searcher=row["searcher"],
        policy=Policy.from_dict(json.loads(row["policy"])),
        result=result,
        feasible=row["feasible"] == "True",
    )


class TrialArchive:
    """Append-only CSV of trials; a row torn by a kill is dropped when the archive is reopened.

    Rows show the task metric's values under its own name (``val_accuracy``, ``val_bpc``); trials hold its scores.
    """

    def __init__(self, path: Path, budget: Budget, metric: MetricSpec = ACCURACY):
        self.path = path
        self.budget = budget
        self.metric = metric
        self.trials: list[Trial] = self._load() if path.exists() else []
        if not path.exists():
            self._write_text(self._header())

    def _header(self) -> str:
        buffer = io.StringIO()
        csv.DictWriter(buffer, self.metric.columns(COLUMNS)).writeheader()
        return buffer.getvalue()

    def _write_text(self, text: str, mode: str = "w", sync: bool = True) -> None:
        with open(self.path, mode, newline="") as handle:
            handle.write(text)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())

    def _load(self) -> list[Trial]:
        text = self.path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        trials = []
        for row in csv.DictReader(io.StringIO(complete)):
            try:
                trials.append(_trial(row, self.metric))
            except (KeyError, ValueError, TypeError):
                break
        kept = self._header() + "".join(self._render(t) for t in trials)
        if kept != text:
            self._write_text(kept)
        return trials

    def _render(self, trial: Trial) -> str:
        buffer = io.StringIO()
        csv.DictWriter(buffer, self.metric.columns(COLUMNS)).writerow(_row(trial, self.metric))
        return buffer.getvalue()

    def append(self, searcher: str, policy: Policy, result: Result) -> Trial:
        """Records one evaluated candidate (flushed, not fsynced; see the module docstring) and returns its row."""
        feasible = result.ok and self.budget.admits(result.size_bytes, result.latency_ms)
        trial = Trial(len(self.trials), searcher, policy, result, feasible)
        self._write_text(self._render(trial), mode="a", sync=False)
        self.trials.append(trial)
        return trial
