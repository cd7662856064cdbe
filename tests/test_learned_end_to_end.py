"""Learned sparsity through the real entry script, on a user's model and on a built-in task: the exported files
reload with the reported accuracy, and what the method removed stays removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from envs.tasks import evaluate_accuracy, load_task
from search import load_model
from tests.fixtures.entry_script import ROOT, csv_rows, run_search_py
from tests.fixtures.tiny_nets import TinyCNN, tiny_splits

TINY = ROOT / "tests/fixtures/tiny_nets.py"
pytestmark = pytest.mark.slow


def _pareto(run: Path) -> list[dict[str, str]]:
    return csv_rows(run / "pareto.csv")


@pytest.mark.parametrize(
    "recipe", ["variational-dropout", "group-lasso", "l0-gates", "soft-sharing", "bayesian", "early-bird"]
)
def test_learned_recipe_on_a_user_model_reloads_with_its_reported_accuracy(recipe: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  learned_epochs: 20\n  learned_lr: 0.01\n  learned_strength: 5\n"
                      "  finetune_epochs: 1\n")
    run = tmp_path / "run"
    proc = run_search_py("--model", f"{TINY}:tiny_cnn", "--data", f"{TINY}:tiny_splits", "--recipe", recipe,
                   "--config", str(config), "--out", str(run), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _pareto(run)
    assert len(rows) == 1 and json.loads(rows[0]["policy"])["learned"] == recipe.replace("-", "_")
    model = load_model(run / rows[0]["model_file"], trust_source=True)
    assert evaluate_accuracy(model, tiny_splits()[2]) == float(rows[0]["test_accuracy"])
    if recipe in ("variational-dropout", "soft-sharing"):  # weights removed
        assert sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")) > 0
    else:  # whole channels removed
        assert int(rows[0]["params"]) < sum(p.numel() for p in TinyCNN().parameters())


def test_export_learned_on_a_built_in_task_removes_channels_and_reloads(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  learned: group_lasso\n  learned_epochs: 2\n  learned_strength: 5\n"
                      "  finetune_epochs: 0.5\n  max_models: 2\n")
    run = tmp_path / "run"
    proc = run_search_py("--task", "lenet300", "--searcher", "random", "--trials", "3", "--budget-mb", "1",
                   "--config", str(config), "--out", str(run), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _pareto(run)
    assert rows
    assert "Learned sparsity group_lasso: trained once in" in (run / "report.md").read_text()
    trials = csv_rows(run / "trials.csv")  # every candidate started from what the method learned
    assert all(json.loads(t["policy"])["learned"] == "group_lasso" for t in trials) and trials[0]["status"] == "ok"
    task = load_task("lenet300")
    for row in rows:
        assert json.loads(row["policy"])["learned"] == "group_lasso"
        model = load_model(run / row["model_file"])
        assert evaluate_accuracy(model, task.test) == float(row["test_accuracy"])
        assert model.fc1.out_features < 300 and int(row["params"]) < 266_610
        assert torch.isfinite(model(task.test.tensors[0][:8])).all()
