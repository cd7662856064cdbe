"""Task loss and metrics: one loss for classifiers, sequence models and regressors; metrics with a direction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from core.metric import ACCURACY, MetricSpec
from envs.tasks import evaluate
from methods.objective import METRICS, Metric, default_metric, task_loss


def test_task_loss_is_cross_entropy_over_the_last_dim_or_mse() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5), torch.randint(0, 5, (4,))
    assert torch.allclose(task_loss(logits, labels), F.cross_entropy(logits, labels))
    sequence, tokens = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    assert torch.allclose(task_loss(sequence, tokens), F.cross_entropy(sequence.permute(0, 2, 1), tokens))
    outputs, targets = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.allclose(task_loss(outputs, targets), F.mse_loss(outputs, targets))


def test_bits_per_character_of_a_uniform_model_is_log2_of_the_vocabulary() -> None:
    outputs, targets = torch.zeros(3, 10, 16), torch.randint(0, 16, (3, 10))
    total, count = METRICS["bpc"].batch(outputs, targets)
    assert count == 30 and math.isclose(total / count, 4.0, rel_tol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_a_split_value_does_not_depend_on_the_batch_size(batch_size: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 6))
    data = TensorDataset(torch.randint(0, 6, (7, 5)), torch.randint(0, 6, (7, 5)))
    expected = float(F.cross_entropy(model(data.tensors[0]).reshape(-1, 6), data.tensors[1].reshape(-1))) / math.log(2)
    assert math.isclose(evaluate(model, data, "bpc", batch_size), expected, rel_tol=1e-5)
    logits = model(data.tensors[0])
    accuracy = float((logits.argmax(-1) == data.tensors[1]).float().mean())
    assert math.isclose(evaluate(model, data, "accuracy", batch_size), accuracy, rel_tol=1e-6)


@pytest.mark.parametrize(("name", "metric"), list(METRICS.items()))
def test_every_metric_states_its_name_and_direction(name: str, metric: Metric) -> None:
    spec = metric.spec
    assert spec.name == name and isinstance(spec.higher_is_better, bool)
    assert spec.value(spec.score(1.25)) == 1.25
    better, worse = (2.0, 1.0) if spec.higher_is_better else (1.0, 2.0)
    assert spec.score(better) > spec.score(worse) and spec.better(better, worse)


def test_scores_rank_higher_is_better_whatever_the_metric() -> None:
    bpc = MetricSpec("bpc", False)
    assert bpc.score(1.9) > bpc.score(2.1) and bpc.column("test") == "test_bpc"
    assert ACCURACY.score(0.9) == 0.9 and ACCURACY.column("val") == "val_accuracy"
    assert default_metric(torch.zeros(2, dtype=torch.int64)) == "accuracy"
    assert default_metric(torch.zeros(2)) == "mse"
