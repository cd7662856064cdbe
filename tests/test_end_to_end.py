"""The real entry script on small budgets: outputs, honesty of every exported model, and resume after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.budget import parse_latency, parse_size
from envs.device import load_device, measure_latency
from envs.tasks import evaluate_accuracy, load_task
from search import load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _search(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "search.py"), *args], capture_output=True, text=True, cwd=cwd,
        stdin=subprocess.DEVNULL, timeout=600,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_search_exports_honest_pareto_models(tmp_path: Path) -> None:
    run = tmp_path / "run"
    budget, target = "120KB", "20ms"
    proc = _search("--task", "lenet5", "--budget-mb", budget, "--target-latency", target, "--searcher", "random",
                   "--trials", "12", "--seed", "3", "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front" in proc.stdout and str(run) in proc.stdout
    for name in ("config.yaml", "trials.csv", "pareto.csv", "pareto.png", "report.md"):
        assert (run / name).is_file(), name
    trials = _rows(run / "trials.csv")
    assert len(trials) == 12
    assert {"policy", "val_accuracy", "size_bytes", "latency_ms", "feasible", "status"} <= set(trials[0])
    pareto = _rows(run / "pareto.csv")
    assert pareto, (run / "report.md").read_text()
    task = load_task("lenet5")
    device = load_device("cpu-b32")
    for row in pareto:
        path = run / row["model_file"]
        assert int(row["size_bytes"]) == path.stat().st_size
        assert int(row["size_bytes"]) <= parse_size(budget)
        assert float(row["latency_ms"]) <= parse_latency(target)
        model = load_model(path)
        assert evaluate_accuracy(model, task.test) == float(row["test_accuracy"])
        assert measure_latency(model, task.input_shape, device) > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "lenet5" and config["trials"] == 12 and config["seed"] == 3


def _wait_for_rows(path: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(_rows(path)) >= count:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "search ended early"
        time.sleep(0.2)
    raise AssertionError("the search did not reach the expected number of trials in time")


def test_resume_after_kill_loses_no_finished_trial(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "short_export.yaml"  # resuming is under test, not the export
    config.write_text("export: {finetune_epochs: 0.25, max_models: 2}\n")
    args = ["--task", "lenet5", "--budget-mb", "200KB", "--searcher", "tpe", "--trials", "14", "--quiet",
            "--config", str(config)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "search.py"), *args, "--out", str(run)], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(run / "trials.csv", 6, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _rows(run / "trials.csv")
    assert 6 <= len(before) < 14
    resumed = _search("--resume", str(run), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = _rows(run / "trials.csv")
    assert len(after) == 14
    assert after[: len(before)] == before
    assert (run / "pareto.csv").is_file()

    import optuna
    from optuna.storages.journal import JournalFileBackend

    assert not (run / "study.db").exists()  # stock Optuna reads the study's journal
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    study = optuna.load_study(study_name="search", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == sum(row["status"] == "ok" for row in after)


def test_recipe_run_reproduces_its_table_in_the_exported_file(tmp_path: Path) -> None:
    import math

    import torch

    from search.recipes import recipe_policy

    run = tmp_path / "run"
    proc = _search("--task", "lenet5", "--recipe", "deep-compression", "--quiet", "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = _rows(run / "pareto.csv")
    model = load_model(run / row["model_file"])
    policy = recipe_policy("deep-compression", "lenet5", ["conv1", "conv2", "fc1", "fc2"])
    modules = dict(model.named_modules())
    for name, choice in policy:
        weight = modules[name].weight.detach()
        pruned = math.floor(round(choice.sparsity * weight.numel(), 6))
        assert int(torch.count_nonzero(weight)) == weight.numel() - pruned
        assert len(torch.unique(weight[weight != 0])) <= 2**choice.bits
    assert int(row["size_bytes"]) == (run / row["model_file"]).stat().st_size


def test_predicted_latency_search_reports_prediction_and_measurement(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "predicted.yaml"
    config.write_text("evaluator: {latency: predicted, latency_check_every: 2}\nexport: {finetune_epochs: 0.5}\n")
    proc = _search("--task", "lenet300", "--target-latency", "50ms", "--searcher", "random", "--trials", "8",
                   "--config", str(config), "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pareto = _rows(run / "pareto.csv")
    assert pareto
    for row in pareto:
        assert float(row["predicted_latency_ms"]) > 0 and float(row["latency_ms"]) > 0
    report = (run / "report.md").read_text()
    assert "Latency model: median absolute error" in report and "predicted (ms)" in report


def test_cpu_any_searches_the_runtime_and_each_exported_model_runs_on_its_own(tmp_path: Path) -> None:
    from methods.packing import read_header
    from search import runnable_model

    run = tmp_path / "run"
    config = tmp_path / "small.yaml"
    config.write_text("export: {finetune_epochs: 0.2, max_models: 4}\n")
    proc = _search("--task", "lenet300", "--device", "cpu-any", "--target-latency", "50ms", "--searcher", "random",
                   "--trials", "8", "--seed", "1", "--config", str(config), "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    allowed = load_device("cpu-any").runtimes
    trials = _rows(run / "trials.csv")
    assert len({row["runtime"] for row in trials}) > 1 and {row["runtime"] for row in trials} <= set(allowed)
    assert all(yaml.safe_load(row["policy"])["runtime"] == row["runtime"] for row in trials)
    pareto = _rows(run / "pareto.csv")
    assert pareto and {row["runtime"] for row in pareto} <= set(allowed)
    task = load_task("lenet300")
    calibration = task.train.tensors[0][:500]  # the search's int8 calibration inputs (calibration_images)
    for row in pareto:
        path = run / row["model_file"]
        assert read_header(path.read_bytes()).runtime == row["runtime"]
        runnable = runnable_model(path, calibration=calibration, threads=load_device("cpu-any").threads)
        assert evaluate_accuracy(runnable, task.test) == float(row["test_accuracy"]), row["runtime"]
    report = (run / "report.md").read_text()
    assert f"runtime searched per candidate among {', '.join(allowed)} (default torch)" in report
