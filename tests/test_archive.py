from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.budget import Budget
from core.policy import LayerChoice, Policy
from core.result import Result
from search.archive import TrialArchive

BUDGET = Budget(size_bytes=1000, latency_ms=10.0)


def _policy(s: float) -> Policy:
    return Policy.from_choices({"fc": LayerChoice(sparsity=s, bits=4)})


def test_rows_survive_reopen_and_mark_feasibility(tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    archive = TrialArchive(path, BUDGET)
    archive.append("random", _policy(0.1), Result(val_accuracy=0.9, size_bytes=900, latency_ms=5.0))
    archive.append("random", _policy(0.2), Result(val_accuracy=0.95, size_bytes=1100, latency_ms=5.0))
    archive.append("random", _policy(0.3), Result.failed("RuntimeError: boom"))
    again = TrialArchive(path, BUDGET)
    assert [t.number for t in again.trials] == [0, 1, 2]
    assert [t.feasible for t in again.trials] == [True, False, False]
    assert again.trials[1].policy == _policy(0.2)
    assert again.trials[1].result.val_accuracy == 0.95
    assert again.trials[2].result.error == "RuntimeError: boom"


def test_a_torn_last_row_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    archive = TrialArchive(path, BUDGET)
    archive.append("tpe", _policy(0.1), Result(val_accuracy=0.9, size_bytes=900, latency_ms=5.0))
    archive.append("tpe", _policy(0.2), Result(val_accuracy=0.8, size_bytes=800, latency_ms=5.0))
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # a kill in the middle of the last write
    again = TrialArchive(path, BUDGET)
    assert [t.number for t in again.trials] == [0]
    again.append("tpe", _policy(0.3), Result(val_accuracy=0.7, size_bytes=700, latency_ms=5.0))
    assert [t.policy for t in TrialArchive(path, BUDGET).trials] == [_policy(0.1), _policy(0.3)]


@pytest.mark.parametrize("later", [("latency_spread_ms",), ("finetune_steps", "screen_accuracy")])
def test_later_columns_are_kept_and_earlier_archives_without_them_still_load(tmp_path: Path, later: tuple) -> None:
    path = tmp_path / "trials.csv"
    archive = TrialArchive(path, BUDGET)
    result = Result(val_accuracy=0.9, size_bytes=900, latency_ms=5.0, latency_spread_ms=0.25, finetune_steps=30,
                    screen_accuracy=0.5)
    archive.append("tpe", _policy(0.1), result)
    assert TrialArchive(path, BUDGET).trials[0].result == result
    header, row = path.read_text().splitlines()
    columns = header.split(",")
    drop = {columns.index(name) for name in later}
    earlier = tmp_path / "earlier.csv"  # as written before these columns existed
    values = row.split(",")
    earlier.write_text(",".join(c for i, c in enumerate(columns) if i not in drop) + "\n"
                       + ",".join(v for i, v in enumerate(values) if i not in drop) + "\n")
    loaded = TrialArchive(earlier, BUDGET).trials
    assert len(loaded) == 1 and loaded[0].result.latency_ms == 5.0
    defaults = Result()
    for name in later:
        value, default = getattr(loaded[0].result, name), getattr(defaults, name)
        assert value == default or (math.isnan(value) and math.isnan(default))


def test_runtime_column_is_kept_and_earlier_archives_without_it_still_load(tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    archive = TrialArchive(path, BUDGET)
    int8 = Policy.from_choices({"fc": LayerChoice(sparsity=0.1, bits=4)}, runtime="torch-int8")
    archive.append("tpe", int8, Result(val_accuracy=0.9, size_bytes=900, latency_ms=5.0, runtime="torch-int8"))
    archive.append("tpe", _policy(0.2), Result(val_accuracy=0.9, size_bytes=900, latency_ms=5.0, runtime="torch"))
    archive.append("tpe", _policy(0.3), Result.failed("boom"))
    loaded = TrialArchive(path, BUDGET).trials
    assert [t.result.runtime for t in loaded] == ["torch-int8", "torch", ""]
    assert loaded[0].policy.runtime == "torch-int8" and loaded[1].policy.runtime is None
    lines = path.read_text().splitlines()
    columns = lines[0].split(",")
    drop = columns.index("runtime")
    earlier = tmp_path / "earlier.csv"  # as written before candidates named their runtime
    values = lines[2].split(",")
    earlier.write_text(",".join(c for i, c in enumerate(columns) if i != drop) + "\n"
                       + ",".join(v for i, v in enumerate(values) if i != drop) + "\n")
    again = TrialArchive(earlier, BUDGET)
    assert len(again.trials) == 1 and again.trials[0].result.runtime == "" and again.trials[0].result.ok
    assert "runtime" in earlier.read_text().splitlines()[0].split(",")  # rewritten in the current format


def test_a_lower_is_better_metric_is_written_as_its_value_and_read_back_as_its_score(tmp_path: Path) -> None:
    import csv

    from core.metric import MetricSpec

    bpc = MetricSpec("bpc", False)
    path = tmp_path / "trials.csv"
    archive = TrialArchive(path, BUDGET, bpc)
    archive.append("random", _policy(0.1), Result(val_accuracy=-2.25, size_bytes=900, latency_ms=5.0,
                                                  screen_accuracy=-2.5))
    with open(path, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert "val_accuracy" not in row and float(row["val_bpc"]) == 2.25 and float(row["screen_bpc"]) == 2.5
    (trial,) = TrialArchive(path, BUDGET, bpc).trials
    assert (trial.result.val_accuracy, trial.result.screen_accuracy) == (-2.25, -2.5)
