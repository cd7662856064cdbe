"""The ray searcher on a real multi-node cluster: a head and worker nodes in private namespaces.

Each test starts its own cluster inside ``unshare`` (network namespace with loopback only, PID
namespace so every process ends with the test); see tests/ray_cluster.py and tests/ray_scenarios.py.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray_cluster import HEAD_ADDRESS, ROOT, Node, namespace_problem, run_in_cluster

pytestmark = pytest.mark.slow

SCENARIOS = ROOT / "tests" / "ray_scenarios.py"
INJECTED = "injected failure"
"""What tests/fixtures/flaky_mlp.py raises."""
WORKER_PORT = 6411
"""Raylet port of the worker node the kill test ends."""
SMALL = {
    "evaluator": {"finetune_steps": 16},
    "export": {"finetune_epochs": 0.1, "max_models": 2},
}
"""Settings that keep a lenet300 sweep to seconds: a 16-step fine-tune per candidate, a short export."""


@pytest.fixture(scope="module", autouse=True)
def _namespaces() -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(f"Ray cluster tests skipped: {problem}")


def _scenario(tmp_path: Path, nodes: list[Node], scenario: str, search_args: list[str], settings: dict[str, Any],
              **options: int) -> dict[str, Any]:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    report = tmp_path / "report.json"
    flags = [f"--{name}={value}" for name, value in options.items()]
    command = [sys.executable, str(SCENARIOS), scenario, "--report", str(report), *flags, "--",
               *search_args, "--searcher", "ray", "--ray-address", HEAD_ADDRESS, "--config", str(config), "--quiet"]
    proc = run_in_cluster(nodes, command, cwd=tmp_path)
    assert proc.returncode == 0 and report.is_file(), f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    outcome = json.loads(report.read_text())
    assert outcome["search"]["returncode"] == 0, outcome["search"]["stderr"][-6000:]
    return outcome


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _node_with(nodes: list[dict[str, Any]], resource: str) -> str:
    (node,) = [n["id"] for n in nodes if resource in n["resources"]]
    return node


def test_sweep_spans_both_nodes_and_times_each_device_on_its_node(tmp_path: Path) -> None:
    run = tmp_path / "run"
    nodes = [Node(resources={"cpu_b32": 1}), Node(resources={"cpu_b1": 1})]
    args = ["--task", "lenet300", "--budget-mb", "120KB", "--target-latency", "20ms", "--devices", "cpu-b1,cpu-b32",
            "--workers", "2", "--trials", "6", "--out", str(run)]
    outcome = _scenario(tmp_path, nodes, "run", args, SMALL)
    stdout = outcome["search"]["stdout"]
    assert "Per-device summary" in stdout and "| cpu-b1 | cpu_b1 |" in stdout and "| cpu-b32 | cpu_b32 |" in stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["devices"] == ["cpu-b1", "cpu-b32"] and config["workers"] == 2
    assert config["ray_address"] == HEAD_ADDRESS and config["searcher"] == "ray"
    ran_on = set()
    for device, resource in (("cpu-b1", "cpu_b1"), ("cpu-b32", "cpu_b32")):
        trials = _rows(run / device / "trials.csv")
        ledger = _rows(run / device / "tune_trials.csv")
        assert len(trials) == len(ledger) == 6
        assert {row["status"] for row in trials} <= {"ok", "stopped"} and trials[0]["searcher"] == "ray"
        assert {row["finetune_steps"] for row in ledger if row["status"] == "ok"} == {"16"}
        assert len({row["trial_id"] for row in ledger}) == 6
        assert {row["latency_node_id"] for row in ledger} == {_node_with(outcome["nodes"], resource)}
        ran_on |= {row["node_id"] for row in ledger}
        assert (run / device / "pareto.csv").is_file() and (run / device / "report.md").is_file()
        assert yaml.safe_load((run / device / "config.yaml").read_text())["device"] == device
    assert ran_on == {n["id"] for n in outcome["nodes"]}
    assert "cpu-b1" in (run / "summary.md").read_text()


def test_failing_trial_is_retried_then_recorded_as_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    nodes = [Node(resources={"cpu_b1": 1}), Node()]
    settings = {"space": {"bits": [2]}, "searcher_options": {"max_failures": 1},
                "export": {"finetune_epochs": 0.1, "max_models": 2}}
    args = ["--model", f"{ROOT / 'tests/fixtures/flaky_mlp.py'}:build", "--device", "cpu-b1", "--workers", "2",
            "--trials", "3", "--out", str(run)]
    _scenario(tmp_path, nodes, "run", args, settings)
    trials = _rows(run / "trials.csv")
    ledger = _rows(run / "tune_trials.csv")
    assert len(trials) == len(ledger) == 3
    assert {row["status"] for row in trials} == {"failed"}
    assert all(INJECTED in row["error"] for row in trials), trials[0]["error"]
    assert {row["failures"] for row in ledger} == {"2"}  # the first attempt and one retry
    assert "Failed candidates" in (run / "report.md").read_text()


def test_killed_worker_node_does_not_stop_the_sweep(tmp_path: Path) -> None:
    run = tmp_path / "run"
    nodes = [Node(resources={"cpu_b1": 1}), Node(manager_port=WORKER_PORT)]
    settings = {**SMALL, "searcher_options": {"scheduler": "fifo"}}
    args = ["--task", "lenet300", "--device", "cpu-b1", "--workers", "2", "--trials", "10", "--out", str(run)]
    outcome = _scenario(tmp_path, nodes, "kill-worker", args, settings, rows=2, port=WORKER_PORT)
    (head,) = [n["id"] for n in outcome["nodes"] if n["port"] != WORKER_PORT]
    assert outcome["rows_at_kill"] < 10
    trials = _rows(run / "trials.csv")
    ledger = _rows(run / "tune_trials.csv")
    assert len(trials) == len(ledger) == 10
    assert {row["status"] for row in trials} == {"ok"}
    # Both nodes were busy when the worker's raylet was killed: its trial failed there and was retried.
    assert max(int(row["failures"]) for row in ledger) >= 1
    assert {row["node_id"] for row in ledger[outcome["rows_at_kill"] + 2 :]} == {head}


def test_killed_driver_resumes_without_losing_finished_trials(tmp_path: Path) -> None:
    run = tmp_path / "run"
    nodes = [Node(resources={"cpu_b1": 1}), Node()]
    args = ["--task", "lenet300", "--budget-mb", "120KB", "--device", "cpu-b1", "--workers", "2", "--trials", "10",
            "--out", str(run)]
    outcome = _scenario(tmp_path, nodes, "kill-driver", args, SMALL, rows=3)
    before = list(csv.DictReader(io.StringIO(outcome["trials_at_kill"])))
    after = _rows(run / "trials.csv")
    ledger = _rows(run / "tune_trials.csv")
    assert 3 <= len(before) < 10
    assert after[: len(before)] == before
    assert len(after) == len(ledger) == 10
    assert len({row["trial_id"] for row in ledger}) == 10
    assert (run / "pareto.csv").is_file() and (run / "report.md").is_file()
