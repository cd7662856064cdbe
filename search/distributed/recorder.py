"""Writes trials.csv from the Tune driver, exactly once per trial, even across a killed and restored driver."""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial as TuneTrial
from tqdm import tqdm

from core.budget import Budget
from core.metric import ACCURACY, MetricSpec
from core.policy import Policy
from core.result import STATUS_OK, STATUS_STOPPED, Result
from search.archive import ARCHIVE_FILE, TrialArchive
from search.distributed.trial import (
    ACCURACY_KEY,
    FINAL_KEY,
    LATENCY_NODE_KEY,
    NODE_KEY,
    POLICY_KEY,
    STEPS_KEY,
    result_from_metrics,
)

LEDGER_FILE = "tune_trials.csv"
"""Which Tune trial wrote which trials.csv row, and on which nodes it ran."""
LEDGER_COLUMNS = ["row", "trial_id", "status", "failures", "node_id", "latency_node_id", "finetune_steps"]
SEARCHER_LABEL = "ray"
"""The ``searcher`` column of the rows."""


class TrialLedger:
    """``tune_trials.csv``: one line per recorded Tune trial, written (durably) before its trials.csv row.

    On reopening, lines whose row never reached trials.csv (the driver died in between) are dropped,
    so a trial is recorded again only if its row is missing, and never twice.
    """

    def __init__(self, path: Path, rows: int):
        """Args:
        path: the ledger file.
        rows: complete rows in trials.csv.
        """
        self.path = path
        self.entries = [e for e in self._load(path) if int(e["row"]) < rows]
        self._write(self._render(self.entries), "w")
        self._ids = {e["trial_id"] for e in self.entries}

    @staticmethod
    def _load(path: Path) -> list[dict[str, str]]:
        if not path.exists():
            return []
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]
        entries = []
        for row in csv.DictReader(io.StringIO(complete)):
            if not (row.get("row") or "").isdigit() or not row.get("trial_id"):
                break
            entries.append(row)
        return entries

    @staticmethod
    def _render(entries: list[dict[str, Any]], header: bool = True) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, LEDGER_COLUMNS)
        if header:
            writer.writeheader()
        writer.writerows(entries)
        return buffer.getvalue()

    def _write(self, text: str, mode: str) -> None:
        with open(self.path, mode, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self._ids

    def add(self, entry: dict[str, Any]) -> None:
        """Appends one line durably."""
        self._write(self._render([entry], header=False), "a")
        self.entries.append({k: str(v) for k, v in entry.items()})
        self._ids.add(str(entry["trial_id"]))


@dataclass(frozen=True)
class TrialQuota:
    """The run's trial total against the rows already recorded (read from the ledger on disk).

    Lets the searcher stop proposing once every trial is accounted for, including trials a
    killed driver recorded after the experiment state it is restored from was saved.
    """

    run_dir: str
    """The run folder."""
    total: int
    """Rows the run ends with (``--trials``)."""

    def recorded(self) -> int:
        """Trials recorded so far."""
        path = Path(self.run_dir) / LEDGER_FILE
        if not path.exists():
            return 0
        text = path.read_text()
        return max(0, text[: text.rfind("\n") + 1].count("\n") - 1)


@dataclass
class _Sink:
    """The open files of one run folder."""

    archive: TrialArchive
    ledger: TrialLedger

    @classmethod
    def open(cls, run_dir: Path, budget: Budget, metric: MetricSpec = ACCURACY) -> _Sink:
        archive = TrialArchive(run_dir / ARCHIVE_FILE, budget, metric)
        return cls(archive, TrialLedger(run_dir / LEDGER_FILE, len(archive.trials)))


def _error_text(trial: TuneTrial) -> str:
    """The last exception line of the trial's error file (a text file Tune writes; never the pickled error)."""
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    exceptions = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    last = (exceptions or lines or ["unknown error"])[-1]
    return f"failed {trial.num_failures} time(s); last: {last}"


class SweepRecorder(Callback):
    """Tune callback: every trial that completes, is stopped early or exhausts its retries becomes one row.

    Runs in the driver and is pickled with the Tuner (``tuner.pkl``); only plain settings are
    pickled, the files and the progress bar are opened per session in :meth:`setup`.
    """

    def __init__(
        self, run_dir: Path, budget: Budget, total: int, progress: bool, metric: MetricSpec = ACCURACY
    ) -> None:
        self.run_dir = str(run_dir)
        self.budget = budget
        self.metric = metric
        self.total = total
        self.progress = progress
        self._sink: _Sink | None = None
        self._bar: tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sink": None, "_bar": None}

    def setup(self, **info: Any) -> None:
        self._sink = _Sink.open(Path(self.run_dir), self.budget, self.metric)
        self._bar = tqdm(total=self.total, initial=len(self._sink.archive.trials), desc="search (ray)",
                         disable=not self.progress, file=sys.stderr, dynamic_ncols=True)

    def _open(self) -> _Sink:
        if self._sink is None:
            self.setup()
        return self._sink

    def _record(self, trial: TuneTrial, result: Result, metrics: dict[str, Any]) -> None:
        sink = self._open()
        if trial.trial_id in sink.ledger:
            return
        sink.ledger.add({
            "row": len(sink.archive.trials),
            "trial_id": trial.trial_id,
            "status": result.status,
            "failures": trial.num_failures,
            "node_id": metrics.get(NODE_KEY, ""),
            "latency_node_id": metrics.get(LATENCY_NODE_KEY, ""),
            "finetune_steps": metrics.get(STEPS_KEY, ""),
        })
        sink.archive.append(SEARCHER_LABEL, Policy.from_json(trial.config[POLICY_KEY]), result)
        if self._bar is not None:
            self._bar.update(len(sink.archive.trials) - self._bar.n)
            feasible = sum(t.feasible for t in sink.archive.trials)
            self._bar.set_postfix_str(f"{feasible} within budget")

    def _record_finished(self, trial: TuneTrial) -> None:
        metrics = dict(trial.last_result or {})
        if ACCURACY_KEY not in metrics:
            return  # never reported (removed while pending): nothing was evaluated
        if metrics.get(FINAL_KEY, False):
            result = result_from_metrics(metrics, STATUS_OK)
        else:
            reason = (f"stopped early by ASHA after {metrics[STEPS_KEY]} fine-tune steps "
                      f"(val accuracy {metrics[ACCURACY_KEY]:.4f} at that fidelity)")
            result = result_from_metrics(metrics, STATUS_STOPPED, reason)
        self._record(trial, result, metrics)

    def _record_failed(self, trial: TuneTrial) -> None:
        self._record(trial, Result.failed(_error_text(trial)), dict(trial.last_result or {}))

    def on_trial_complete(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, **info: Any) -> None:
        self._record_finished(trial)

    def on_trial_error(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, **info: Any) -> None:
        self._record_failed(trial)

    def on_experiment_end(self, trials: list[TuneTrial], **info: Any) -> None:
        """Records any ended trial the hooks above missed, then closes the progress bar."""
        for trial in trials:
            if trial.status == TuneTrial.TERMINATED:
                self._record_finished(trial)
            elif trial.status == TuneTrial.ERROR:
                self._record_failed(trial)
        if self._bar is not None:
            self._bar.close()
