"""Streamed splits: loaders, map-style and iterable datasets read batch by batch, never stacked."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core.errors import UsageError
from envs.device import load_device
from envs.evaluator import Evaluator, EvaluatorSettings
from envs.tasks import load_task
from envs.tasks.data import as_split
from envs.tasks.training import TrainRecipe, eval_batch_size, evaluate, train_model
from methods.finetune import CodeSpec, FinetuneSettings, masked_finetune
from methods.streams import Stream, head, sample_count, subset
from search.cli import main
from search.loading import load_model
from tests.fixtures.task_files import GeneratedSamples, GeneratedStream, dict_to_device, stack_dicts

TASKS = str(Path(__file__).parent / "fixtures" / "task_files.py")


class Counting(Dataset):
    """A map-style dataset of ``length`` generated samples that counts the samples read."""

    def __init__(self, length: int) -> None:
        self.length, self.reads = length, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        x = torch.randn(8, generator=torch.Generator().manual_seed(index % 100_003))
        return x, int(x.sum() > 0)


def _stacked(data: Dataset) -> TensorDataset:
    samples = [data[i] for i in range(len(data))]
    return TensorDataset(*stack_dicts(samples).values())


def test_every_kind_of_source_scores_as_the_stacked_split() -> None:
    model = nn.Sequential(nn.Linear(16, 4))
    reference = evaluate(model, _stacked(GeneratedSamples(0, 130)), "accuracy")
    sources = [
        Stream(GeneratedSamples(0, 130), collate=stack_dicts, to_device=dict_to_device),
        Stream(GeneratedStream(0, 130), collate=stack_dicts, to_device=dict_to_device),
        Stream(DataLoader(GeneratedSamples(0, 130), batch_size=7, collate_fn=stack_dicts), to_device=dict_to_device),
    ]
    for stream in sources:
        assert sample_count(stream) == 130
        assert evaluate(model, stream, "accuracy", batch_size=32) == reference


def test_a_split_far_larger_than_memory_is_sampled_without_being_read() -> None:
    huge = Counting(10**12)  # 10^12 samples of 8 floats: 32 TB if it were stacked
    stream = as_split(huge, "huge")
    assert isinstance(stream, Stream)
    first = subset(stream, 50, seed=3)
    assert len(first) == 50 and torch.equal(first.tensors[0], subset(stream, 50, seed=3).tensors[0])
    assert not torch.equal(first.tensors[0], subset(stream, 50, seed=4).tensors[0])
    model = nn.Sequential(nn.Linear(8, 2))
    before = huge.reads
    masked_finetune(model, {"0": torch.ones(2, 8, dtype=torch.bool)}, {"0": CodeSpec(bits=32)}, stream,
                    FinetuneSettings(steps=5, batch_size=16))
    assert huge.reads - before == 5 * 16  # exactly the samples of the 5 steps
    assert len(head(stream, 10)) == 10


def test_small_map_style_data_is_stacked_and_loaders_and_iterables_are_streamed() -> None:
    small = TensorDataset(torch.randn(20, 3), torch.zeros(20, dtype=torch.long))
    assert isinstance(as_split(small, "small"), TensorDataset)
    assert isinstance(as_split(list(zip(small.tensors[0], [0] * 20, strict=True)), "pairs"), TensorDataset)
    assert isinstance(as_split(DataLoader(small, batch_size=4), "loader"), Stream)


def test_training_on_a_stream_follows_the_seed_and_learns() -> None:
    train = Stream(GeneratedSamples(0, 600), collate=stack_dicts, to_device=dict_to_device)
    test = _stacked(GeneratedSamples(5_000, 300))

    def trained() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        return train_model(model, train, TrainRecipe(epochs=4, lr=1e-2, batch_size=32, schedule="cosine"))

    first, second = trained(), trained()
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert evaluate(first, test) > 0.8


def test_the_search_scores_a_fixed_seeded_subset_of_the_validation_split() -> None:
    task = load_task(f"{TASKS}:streamed")
    device = load_device("cpu-any")
    settings = EvaluatorSettings(val_samples=100, val_seed=1, timing="inline")
    evaluator = Evaluator(task, device, settings)
    assert len(evaluator.val_data) == 100  # an iterable: its first 100
    expected = _stacked(GeneratedSamples(10_000, 100))
    assert torch.equal(evaluator.val_data.tensors[0], expected.tensors[0])
    assert len(evaluator.calibration_inputs) == min(settings.calibration_images, 1200)


def test_a_streamed_task_is_searched_exported_and_reloaded_with_its_test_metric(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["--task", f"{TASKS}:streamed", "--budget-mb", "2KB", "--searcher", "random", "--trials", "3",
                 "--out", str(run), "--quiet"]) == 0
    with open(run / "pareto.csv", newline="") as handle:
        pareto = list(csv.DictReader(handle))
    assert pareto
    task = load_task(f"{TASKS}:streamed")
    for row in pareto:
        assert int(row["size_bytes"]) <= 2000
        model = load_model(run / row["model_file"], trust_source=True)
        assert evaluate(model, task.test) == pytest.approx(float(row["test_accuracy"]), abs=1e-9)


def test_a_stream_that_is_not_data_is_refused() -> None:
    with pytest.raises(UsageError, match="give a torch DataLoader"):
        Stream(42, where="x")


def test_large_inputs_and_streams_are_evaluated_in_smaller_batches() -> None:
    assert eval_batch_size(TensorDataset(torch.zeros(5, 1, 28, 28), torch.zeros(5))) == 1000
    assert eval_batch_size(TensorDataset(torch.zeros(5, 3, 96, 96), torch.zeros(5))) == 151
    assert eval_batch_size(Stream(GeneratedSamples(0, 10))) == 256


class _Counted(Dataset):
    """1,000 samples of 4 features that count how often they are read."""

    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.full((4,), float(index)), index % 3


def test_the_start_of_a_stream_is_read_once_for_every_check_and_calibration() -> None:
    from envs.tasks.data import data_fingerprint, probe, sample_shape

    source = _Counted()
    stream = Stream(source)
    splits = (stream, stream, stream)
    first = probe(stream)
    data_fingerprint(splits)
    sample_shape(splits)
    assert source.reads == len(first) == 256
    calibration = head(stream, 500)
    reads = source.reads
    assert 256 + 500 <= reads <= 256 + 2 * 500 and torch.equal(calibration.tensors[0][:256], first.tensors[0])
    assert torch.equal(head(stream, 256).tensors[1], first.tensors[1]) and source.reads == reads
    assert len(head(Stream(TensorDataset(torch.zeros(3, 2), torch.zeros(3))), 10)) == 3
