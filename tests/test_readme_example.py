"""The README's complete examples of your own model and data (a character GRU over a text file, a task file, a task
streaming records from disk) work as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.policy import LayerChoice, Policy
from envs.device import load_device
from envs.evaluator import Evaluator
from envs.tasks import load_task, mnist_splits
from envs.tasks.data import MNIST_MEAN, MNIST_STD
from envs.tasks.text import library_text
from envs.tasks.training import evaluate
from methods.streams import Stream

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# my_text\.py\n.*?)```", text, re.S)
    assert block, "the README's my_text.py example is missing"
    return block.group(1)


def test_the_readme_text_example_loads_compresses_and_scores_in_bits_per_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_text.py").write_text(_example())
    (tmp_path / "corpus.txt").write_text(library_text()[:80_000])
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_my_text", tmp_path / "my_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.model().state_dict(), tmp_path / "w.pt")  # untrained weights: no training in this test
    task = load_task(model="my_text.py:model", data="my_text.py:data", weights=tmp_path / "w.pt", metric="bpc")
    assert task.metric == "bpc" and task.input_shape == (64,) and 0 < task.input_shape.vocab <= 128
    assert task.num_classes == 128 and len(task.val) == len(task.test) and len(task.train) >= 8 * len(task.val)
    evaluator = Evaluator(task, load_device("cpu-b32"))
    try:
        assert [spec.kind for spec in evaluator.layers] == ["embedding", "recurrent", "linear"]
        policy = Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=4) for name in evaluator.layer_names})
        result = evaluator.evaluate(policy)
    finally:
        evaluator.close()
    assert result.ok, result.error
    assert 4.0 < -result.val_accuracy < 8.0  # barely trained, over 128 characters: near log2(128) = 7 bits


def test_the_readme_task_file_trains_with_its_loss_and_scores_in_its_own_metric(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# my_task\.py\n.*?)```", text, re.S)
    assert block, "the README's my_task.py example is missing"
    (tmp_path / "my_task.py").write_text(block.group(1))
    task = load_task(f"{tmp_path / 'my_task.py'}:task", cache_dir=tmp_path)
    assert task.metric == "mae" and not task.metric_spec.higher_is_better
    assert task.loss is torch.nn.functional.smooth_l1_loss
    inputs, targets = task.test.tensors
    with torch.no_grad():
        mae = float((task.model(inputs) - targets).abs().mean())
    assert mae < 0.2 * float(targets.abs().mean())  # trained by the tool with the recipe


def test_the_readme_streamed_task_reads_records_from_disk_batch_by_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# my_stream\.py\n.*?)```", text, re.S)
    assert block, "the README's my_stream.py example is missing"
    (tmp_path / "my_stream.py").write_text(block.group(1))
    train, val, test = mnist_splits()
    records = []
    for split in (train, val, test):
        pixels = (split.tensors[0] * MNIST_STD + MNIST_MEAN).mul(255).round().clamp(0, 255).to(torch.uint8)
        records.append(torch.cat([split.tensors[1].to(torch.uint8)[:, None], pixels.flatten(1)], dim=1))
    (tmp_path / "digits.u8").write_bytes(torch.cat(records).numpy().tobytes())
    monkeypatch.chdir(tmp_path)
    task = load_task(f"{tmp_path / 'my_stream.py'}:task", cache_dir=tmp_path)
    assert all(isinstance(split, Stream) for split in (task.train, task.val, task.test))
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert evaluate(task.model, task.test) > 0.85  # trained by the tool, streaming the records
