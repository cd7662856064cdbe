"""User models with recurrent and attention layers go through search, export and ``load_model``.

(The Conv1d + GRU model, whose conv channels and GRU hidden units are pruned, is checked without a search in
``tests/test_layer_kinds.py``.)

Each model's recurrent, attention and 1-d conv weights are compressed (the policy names them and their
files store them sparse and coded), every Pareto model is within the size budget, and its reported test
accuracy is reproduced by the reloaded file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from core.budget import parse_size
from envs.tasks import TrainRecipe, evaluate_accuracy, load_task, mnist_splits, train_model
from search import load_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "fixtures" / "sequence_models.py"
pytestmark = pytest.mark.slow

CASES = {
    # factory: (budget, layers whose weights must be compressed, a parameter of each)
    "row_lstm": ("17KB", {"rnn": "rnn.weight_hh_l1", "fc": "fc.weight"}),
    "tiny_vit": ("12KB", {"encoder.layers.0.self_attn": "encoder.layers.0.self_attn.in_proj_weight",
                          "encoder.layers.1.linear1": "encoder.layers.1.linear1.weight"}),
}


def _fixture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sequence_models_fixture", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("factory", list(CASES))
def test_user_sequence_model_is_searched_exported_and_reloaded(factory: str, tmp_path: Path) -> None:
    budget, compressed = CASES[factory]
    run, config, weights = tmp_path / "run", tmp_path / "config.yaml", tmp_path / "weights.pt"
    config.write_text("export:\n  max_models: 2\n  finetune_epochs: 1.0\n")
    build = getattr(_fixture_module(), factory)
    trained = train_model(build(), mnist_splits()[0], TrainRecipe(epochs=2, lr=3e-3, batch_size=64))
    torch.save(trained.state_dict(), weights)  # a quickly trained model: the search is what is tested
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search.py"), "--model", f"{MODELS}:{factory}", "--weights", str(weights),
         "--budget-mb", budget, "--searcher", "random", "--trials", "4", "--seed", "1", "--config", str(config),
         "--out", str(run), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    with open(run / "pareto.csv", newline="") as handle:
        pareto = list(csv.DictReader(handle))
    assert pareto, (run / "report.md").read_text()
    task = load_task(model=f"{MODELS}:{factory}", weights=weights)
    for row in pareto:
        path = run / row["model_file"]
        assert int(row["size_bytes"]) == path.stat().st_size <= parse_size(budget)
        policy = json.loads(row["policy"])["layers"]
        assert set(compressed) <= set(policy)
        model = load_model(path, factory=build)
        assert evaluate_accuracy(model, task.test) == float(row["test_accuracy"])
        parameters = dict(model.named_parameters())
        for layer, parameter in compressed.items():
            choice = policy[layer]
            weight = parameters[parameter].detach()
            if choice["sparsity"] > 0:
                assert float((weight == 0).float().mean()) >= choice["sparsity"] - 0.01
            if choice["bits"] < 32:
                assert torch.unique(weight[0]).numel() <= 2 ** choice["bits"] + 1
