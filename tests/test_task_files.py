"""``--task FILE.py:factory``: the user's own model, data, loss and metric, and one clear line for a bad task file."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import evaluate, load_task
from search import load_model
from search.cli import main

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "fixtures" / "task_files.py"
FAST = DeviceProfile(name="test-task-files", threads=1, batch=8, warmup=1, repeats=3)


def test_a_task_file_brings_its_own_loss_and_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.tasks.training as training

    losses = []
    real = training.train_model

    def spy(model, train, recipe, progress=False, loss=None, device="cpu"):  # noqa: ANN001, ANN202 - a pass-through
        losses.append(loss)
        return real(model, train, recipe, progress=progress, loss=loss, device=device)

    monkeypatch.setattr("envs.tasks.registry.train_model", spy)
    task = load_task(f"{TASKS}:regression", cache_dir=tmp_path)
    assert [loss.__name__ for loss in losses] == ["huber"]  # trained with the task's loss, then cached
    assert task.metric == "mae" and task.metric_spec.higher_is_better is False and task.loss.__name__ == "huber"
    assert task.num_classes == 0 and task.source == {"task_file": f"{TASKS}:regression"}
    mae = evaluate(task.model, task.test, task.scorer)
    inputs, targets = task.test.tensors
    with torch.no_grad():
        assert math.isclose(mae, float((task.model(inputs) - targets).abs().mean()), rel_tol=1e-5)
        assert mae < 0.5 * float(targets.abs().mean())  # it learned
    evaluator = Evaluator(task, FAST)
    try:
        result = evaluator.evaluate(Policy.from_choices({name: LayerChoice(sparsity=0.3, bits=8)
                                                        for name in evaluator.layer_names}))
    finally:
        evaluator.close()
    assert result.ok and 0 < -result.val_accuracy < 2 * mae  # scores are minus the metric
    again = load_task(f"{TASKS}:regression", cache_dir=tmp_path)
    assert len(losses) == 1 and torch.equal(again.model[0].weight, task.model[0].weight)  # from the cache


@pytest.mark.slow
def test_a_task_file_is_searched_exported_and_reloaded_in_its_own_metric(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["--task", f"{TASKS}:regression", "--budget-mb", "4KB", "--searcher", "random", "--trials", "4",
                 "--out", str(run), "--quiet"]) == 0
    with open(run / "pareto.csv", newline="") as handle:
        pareto = list(csv.DictReader(handle))
    assert pareto and "test_mae" in pareto[0] and "test_accuracy" not in pareto[0]
    task = load_task(f"{TASKS}:regression")
    for row in pareto:
        model = load_model(run / row["model_file"], trust_source=True)
        assert int(row["size_bytes"]) <= 4000
        assert evaluate(model, task.test, task.scorer) == pytest.approx(float(row["test_mae"]), rel=1e-6)
    assert "test mae" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("not_a_definition", "returned dict; it must return envs.tasks.TaskDefinition"),
        ("metric_without_direction", "MetricSpec(name, higher_is_better)"),
        ("batches_that_do_not_fit", "the model cannot process the data"),
        ("missing", "'missing' is not defined"),
        ("unsized_train", "train split, has no length; give the IterableDataset __len__"),  # streamed data
        ("dict_batches_without_to_device", "batch 0 cannot be used"),
    ],
)
def test_a_bad_task_file_gets_one_line_and_exit_2(
    factory: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(["--task", f"{TASKS}:{factory}", "--budget-mb", "4KB", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and needle in err, err
    assert not run.exists()


def test_a_task_file_takes_no_data_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", f"{TASKS}:regression", "--data", f"{TASKS}:regression", "--budget-mb", "4KB"]) == 2
    assert "cannot be used with a task file" in capsys.readouterr().err
