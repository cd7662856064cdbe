"""User models with recurrent, 1-d conv and attention layers, each a task file with its own loaders, loss and
metric (``tests/fixtures/sequence_tasks.py``), go through search, export and ``load_model``.

Each model's recurrent, attention and 1-d conv weights are compressed (the policy names them and their files
store them sparse and coded), every Pareto model is within the size budget, and its reported test error rate
(the task's own metric, lower is better) is reproduced by the reloaded file on the test ``DataLoader``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.budget import parse_size
from envs.tasks import load_task
from envs.tasks.training import evaluate
from search import load_model

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "fixtures" / "sequence_tasks.py"
pytestmark = pytest.mark.slow

CASES = {
    # factory: (budget, layers whose weights must be compressed, a parameter of each)
    "row_lstm": ("17KB", {"rnn": "rnn.weight_hh_l1", "fc": "fc.weight"}),
    "conv_gru": ("8KB", {"conv": "conv.weight", "gru": "gru.weight_ih_l0"}),
    "tiny_vit": ("12KB", {"encoder.layers.0.self_attn": "encoder.layers.0.self_attn.in_proj_weight",
                          "encoder.layers.1.linear1": "encoder.layers.1.linear1.weight"}),
}


@pytest.mark.parametrize("factory", list(CASES))
def test_user_sequence_task_is_searched_exported_and_reloaded(factory: str, tmp_path: Path) -> None:
    budget, compressed = CASES[factory]
    run, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("export:\n  max_models: 2\n  finetune_epochs: 1.0\n")
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search.py"), "--task", f"{TASKS}:{factory}", "--budget-mb", budget,
         "--searcher", "random", "--trials", "4", "--seed", "1", "--config", str(config), "--out", str(run),
         "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    with open(run / "pareto.csv", newline="") as handle:
        pareto = list(csv.DictReader(handle))
    assert pareto, (run / "report.md").read_text()
    assert "test_error" in pareto[0] and "test_accuracy" not in pareto[0]
    task = load_task(f"{TASKS}:{factory}", cache_dir=tmp_path / "cache")  # the weights the run trained
    for row in pareto:
        path = run / row["model_file"]
        assert int(row["size_bytes"]) == path.stat().st_size <= parse_size(budget)
        policy = json.loads(row["policy"])["layers"]
        assert set(compressed) <= set(policy)
        model = load_model(path, trust_source=True)
        assert evaluate(model, task.test, task.scorer) == float(row["test_error"])
        parameters = dict(model.named_parameters())
        for layer, parameter in compressed.items():
            choice = policy[layer]
            weight = parameters[parameter].detach()
            if choice["sparsity"] > 0:
                assert float((weight == 0).float().mean()) >= choice["sparsity"] - 0.01
            if choice["bits"] < 32:
                assert torch.unique(weight[0]).numel() <= 2 ** choice["bits"] + 1
