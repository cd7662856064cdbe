"""Static int8 execution: close to fp32, deterministic, and what an int8 device measures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import evaluate_accuracy, load_task
from methods.int8 import Int8ConversionError, int8_supported, to_int8

pytestmark = pytest.mark.skipif(not int8_supported(), reason="this PyTorch build has no x86 quantized engine")

INT8 = DeviceProfile(name="test-int8", runtime="torch-int8", threads=1, batch=8, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def task():
    return load_task("lenet300")


def test_int8_accuracy_is_close_to_fp32_and_conversion_is_deterministic(task) -> None:
    calibration = task.train.tensors[0][:256]
    int8 = to_int8(task.model, calibration)
    fp32_accuracy = evaluate_accuracy(task.model, task.val)
    assert abs(evaluate_accuracy(int8, task.val) - fp32_accuracy) <= 0.01
    assert any("quantized" in type(m).__module__ for m in int8.modules())  # real int8 kernels, not fake quant
    x = task.val.tensors[0][:16]
    with torch.inference_mode():
        assert torch.equal(int8(x), to_int8(task.model, calibration)(x))


def test_an_int8_device_measures_the_int8_model(task) -> None:
    evaluator = Evaluator(task, INT8)
    policy = Policy.from_choices({"fc1": LayerChoice(0.8, 4), "fc2": LayerChoice(0.5, 6)})
    compressed = evaluator.compress(policy)
    result = evaluator.measure(compressed)
    int8 = evaluator.runnable(compressed.model)
    assert result.val_accuracy == evaluate_accuracy(int8, task.val)
    assert abs(result.val_accuracy - evaluate_accuracy(compressed.model, task.val)) <= 0.015
    assert result.latency_ms > 0 and result.size_bytes == len(compressed.blob)


def test_untraceable_models_get_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent control flow

    with pytest.raises(Int8ConversionError, match="trace"):
        to_int8(Branchy(), torch.randn(8, 4))
