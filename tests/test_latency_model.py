"""The per-device latency lookup table: keys, profiling, persistence and the overhead fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from envs.device import DeviceProfile
from envs.latency_model import LatencyTable, build_predictor, fit_nonnegative, fit_widths, layer_calls
from envs.runtimes import RUNTIMES

FAST = DeviceProfile(name="test-cpu", threads=1, batch=2, warmup=0, repeats=1)
INT8 = dataclasses.replace(FAST, name="test-int8", runtime="torch-int8")


class _Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.c = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.c(torch.relu(self.b(x))))
        return self.fc(x.mean((2, 3)))


def test_layer_calls_key_by_configuration_and_input_size() -> None:
    calls = layer_calls(_Net(), (1, 12, 12))
    assert [c.activations for c in calls] == [8 * 144, 8 * 144, 8 * 144, 10]
    assert calls[1].key == calls[2].key and calls[0].key != calls[1].key  # b and c share one entry
    assert calls[1].key != layer_calls(_Net(), (1, 14, 14))[1].key
    assert calls[1].key != layer_calls(_Net(6), (1, 12, 12))[1].key
    assert calls[1].key.endswith(":fp32")


def test_table_profiles_each_configuration_once_and_reloads(tmp_path: Path) -> None:
    table = LatencyTable.for_device(FAST, tmp_path)
    calls = layer_calls(_Net(), (1, 12, 12))
    total = table.layers_ms(calls)
    assert total > 0 and table.measured_layers == 3 and len(table.layers) == 3
    table.save()
    again = LatencyTable.for_device(FAST, tmp_path)
    assert again.layers == table.layers
    assert again.layers_ms(calls) == total and again.measured_layers == 0
    other = LatencyTable.for_device(dataclasses.replace(FAST, threads=2), tmp_path)
    assert other.layers == {} and other.path != table.path  # another profile never reuses these timings


def test_nonnegative_fit_recovers_coefficients_of_mixed_units() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(8), rng.uniform(1, 30, 8), rng.uniform(1e4, 1e6, 8)])  # 1, ms, elements
    assert fit_nonnegative(x, x @ np.array([0.5, 1.2, 3e-6])) == pytest.approx((0.5, 1.2, 3e-6), rel=1e-6)
    a, s, b = fit_nonnegative(x, x @ np.array([-2.0, 1.0, 1e-5]))  # a negative fixed cost is clipped
    assert a == 0.0 and s > 0 and b >= 0


def test_fit_widths_are_uniform_then_seeded_mixed() -> None:
    widths = fit_widths(["a", "b"], (1.0, 0.5, 0.25), mixed=2)
    assert widths[:3] == [{"a": k, "b": k} for k in (1.0, 0.5, 0.25)]
    assert all(0.25 <= v <= 1.0 for w in widths[3:] for v in w.values()) and widths[3]["a"] != widths[3]["b"]
    assert widths == fit_widths(["a", "b"], (1.0, 0.5, 0.25), mixed=2)
    assert fit_widths([], (1.0, 0.5), mixed=3) == [{}]


def test_int8_layers_are_timed_as_kernels_on_quantized_channels_last_input() -> None:
    example = torch.randn(2, 8, 12, 12)
    int8, eager = RUNTIMES[INT8.runtime], RUNTIMES[FAST.runtime]
    kernel, quantized = int8.timing_case(nn.Conv2d(8, 16, 3, padding=1), example, INT8.threads)
    assert quantized.is_quantized and quantized.is_contiguous(memory_format=torch.channels_last)
    assert "quantized" in type(kernel).__module__  # the bare kernel: no quantize/dequantize around it
    with torch.inference_mode():
        assert kernel(quantized).shape == (2, 16, 12, 12)
    kernel, quantized = int8.timing_case(nn.Linear(8, 4), torch.randn(2, 8), INT8.threads)
    with torch.inference_mode():
        assert kernel(quantized).is_quantized
    layer, same = eager.timing_case(nn.Linear(8, 4), example[:, :, 0, :8], FAST.threads)
    assert isinstance(layer, nn.Linear) and same is not None and not same.is_quantized


def test_predictor_fits_once_per_architecture_and_is_cached(tmp_path: Path) -> None:
    model = _Net().eval()
    predictor = build_predictor(model, (1, 12, 12), FAST, tmp_path, leaders=["a"], keeps=(1.0, 0.5), mixed=1)
    assert min(dataclasses.astuple(predictor.overhead)) >= 0
    assert predictor(model) > 0
    entries = dict(predictor.table.layers)
    cached = build_predictor(model, (1, 12, 12), FAST, tmp_path, leaders=["a"], keeps=(1.0, 0.5), mixed=1)
    assert cached.overhead == predictor.overhead and cached.table.measured_layers == 0
    assert cached.table.layers == entries
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1


@pytest.mark.parametrize("runtime", ["torch-int8", "onnxruntime-int8", "onnxruntime"])
def test_each_runtime_profiles_its_own_layers(tmp_path: Path, runtime: str) -> None:
    device = dataclasses.replace(FAST, name=f"test-{runtime}", runtime=runtime)
    table = LatencyTable.for_device(device, tmp_path)
    calls = layer_calls(_Net(), (1, 12, 12), table.precision)
    assert table.layers_ms(calls) > 0 and table.measured_layers == 3
    assert all(key.endswith(":int8" if device.int8 else ":fp32") for key in table.layers)
    assert table.path != LatencyTable.for_device(FAST, tmp_path).path


def test_onnx_runtime_entries_leave_out_the_per_call_cost_of_a_session(tmp_path: Path) -> None:
    example = torch.randn(2, 8, 12, 12)
    assert LatencyTable.for_device(FAST, tmp_path)._call_cost(example) == 0.0  # PyTorch runs no session per layer
    ort = LatencyTable.for_device(dataclasses.replace(FAST, name="test-ort", runtime="onnxruntime"), tmp_path)
    cost = ort._call_cost(example)
    assert cost > 0 and ort._call_cost(example) == cost  # timed once per input shape
    call = layer_calls(_Net(), (1, 12, 12), ort.precision)[1]
    assert 0.0 <= ort.layer_ms(call)
