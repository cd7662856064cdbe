"""HashedNets, Net-Trim, once-for-all, mimic students and hypernetworks through the real entry script: as recipes
on a user's model, as searched choices on a built-in task, as a search mode and as built-in tasks; the exported
files reload with the reported accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.tasks import evaluate_accuracy, load_task
from methods.packing import read_header
from search import load_model
from tests.fixtures.entry_script import ROOT, csv_rows, run_search_py
from tests.fixtures.tiny_nets import tiny_splits

TINY = ROOT / "tests/fixtures/tiny_nets.py"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("recipe", "check"), [("hashednets", "hashed"), ("net-trim", "net_trim")])
def test_recipe_on_a_user_model_reloads_with_its_reported_accuracy(recipe: str, check: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  finetune_epochs: 0.5\n")
    run = tmp_path / "run"
    proc = run_search_py("--model", f"{TINY}:tiny_cnn", "--data", f"{TINY}:tiny_splits", "--recipe", recipe,
                   "--config", str(config), "--out", str(run), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(run / "pareto.csv")
    assert len(rows) == 1
    policy = json.loads(rows[0]["policy"])
    path = run / rows[0]["model_file"]
    if check == "hashed":
        entries = [e for e in read_header(path.read_bytes()).tensors if e["encoding"] == "hashed"]
        assert len(entries) == 4 and all(e["lengths"][-1] == 0 for e in entries)  # no codes stored
    else:
        assert policy["saliency"] == "net_trim"
    model = load_model(path, trust_source=True)
    assert evaluate_accuracy(model, tiny_splits()[2]) == float(rows[0]["test_accuracy"])


def test_hashed_codes_and_net_trim_are_searched_choices(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("space:\n  quantizers: [hashed]\n  saliencies: [net_trim, magnitude]\n"
                      "  channel_pruning: false\nexport:\n  finetune_epochs: 0.25\n  max_models: 2\n")
    run = tmp_path / "run"
    proc = run_search_py("--task", "lenet300", "--searcher", "random", "--trials", "3", "--budget-mb", "0.5",
                   "--config", str(config), "--out", str(run), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = [json.loads(t["policy"]) for t in csv_rows(run / "trials.csv")]
    coded = [c for p in trials for c in p["layers"].values() if c.get("bits", 32) != 32]
    assert coded and all(c["quantizer"] == "hashed" for c in coded)
    assert {p.get("saliency", "magnitude") for p in trials} <= {"net_trim", "magnitude"}
    task = load_task("lenet300")
    for row in csv_rows(run / "pareto.csv"):
        model = load_model(run / row["model_file"])
        assert evaluate_accuracy(model, task.test) == float(row["test_accuracy"])


def test_ofa_search_scores_subnetworks_without_finetune_and_reuses_the_supernet(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  learned_epochs: 1\n  finetune_epochs: 0\n  max_models: 2\n")
    runs = [tmp_path / "first", tmp_path / "second"]
    for run, trials in zip(runs, ("3", "1"), strict=True):
        proc = run_search_py("--model", f"{TINY}:tiny_cnn", "--data", f"{TINY}:tiny_splits", "--ofa", "--searcher",
                             "random", "--trials", trials, "--config", str(config), "--out", str(run), "--quiet",
                             cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    trials = csv_rows(runs[0] / "trials.csv")
    assert all(t["finetune_steps"] == "0" for t in trials)
    policies = [json.loads(t["policy"]) for t in trials]
    assert all(p["learned"] == "ofa" and p["channel_importance"] == "index" for p in policies)
    assert "trained once" in (runs[0] / "report.md").read_text()
    assert "read from the cache" in (runs[1] / "report.md").read_text()  # one supernet serves both runs
    for row in csv_rows(runs[0] / "pareto.csv"):
        model = load_model(runs[0] / row["model_file"], trust_source=True)
        assert evaluate_accuracy(model, tiny_splits()[2]) == float(row["test_accuracy"])


def test_a_mimic_student_is_compressed_and_reloads_with_its_reported_accuracy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_search_py("--task", "lenet300-mimic", "--recipe", "uniform", "--out", str(run), "--quiet",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(run / "pareto.csv")
    task = load_task("lenet300-mimic")
    assert len(rows) == 1
    model = load_model(run / rows[0]["model_file"])  # a built-in architecture: no code to trust
    assert sum(p.numel() for p in model.parameters()) == 79_510
    assert evaluate_accuracy(model, task.test) == float(rows[0]["test_accuracy"])


def test_lassonet_recipe_on_a_user_mlp_zeroes_input_columns_and_reloads(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  learned_epochs: 2\n  finetune_epochs: 0.5\n")
    run = tmp_path / "run"
    proc = run_search_py("--model", f"{ROOT / 'tests/fixtures/tiny_mlp.py'}:tiny_mlp", "--data",
                         f"{TINY}:tiny_splits", "--recipe", "lassonet", "--config", str(config), "--out", str(run),
                         "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(run / "pareto.csv")
    assert len(rows) == 1 and json.loads(rows[0]["policy"])["learned"] == "lassonet"
    model = load_model(run / rows[0]["model_file"], trust_source=True)
    dropped = (model[1].weight == 0).all(dim=0)
    assert int(dropped.sum()) == 64 - 16  # a quarter of the 8x8 inputs kept
    assert evaluate_accuracy(model, tiny_splits()[2]) == float(rows[0]["test_accuracy"])


def test_a_hypernetwork_task_stores_its_generator_and_reloads_with_its_reported_accuracy(tmp_path: Path) -> None:
    run, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("export: {finetune_epochs: 0.25}\n")
    proc = run_search_py("--task", "lenet5-hyper", "--recipe", "fp32", "--config", str(config), "--out", str(run),
                         "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = csv_rows(run / "pareto.csv")
    path = run / row["model_file"]
    shapes = read_header(path.read_bytes()).shapes
    assert "conv2.weight" not in shapes and shapes["hyper_bank.z"] == (1, 4)  # the generator, not the kernel
    assert shapes["hyper_bank.net.w_out"] == (25 * 50, 4) and shapes["conv1.weight"] == (20, 1, 5, 5)
    assert int(row["size_bytes"]) == path.stat().st_size < 4 * (431_080 - 25_000 + 6_654) + 8_192
    model = load_model(path)  # a built-in architecture: no code to trust
    assert type(model).__name__ == "HyperLeNet5"
    assert evaluate_accuracy(model, load_task("lenet5-hyper").test) == float(row["test_accuracy"])
