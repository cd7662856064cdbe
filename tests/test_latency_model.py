"""The per-device latency lookup table: keys, profiling, persistence and the overhead fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from envs.device import DeviceProfile
from envs.latency_model import LatencyTable, _nonnegative_line, build_predictor, layer_calls

FAST = DeviceProfile(name="test-cpu", threads=1, batch=2, warmup=0, repeats=1)


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


def test_nonnegative_overhead_fit() -> None:
    x = np.array([[1.0, v] for v in (10.0, 20.0, 40.0)])
    assert _nonnegative_line(x, 2.0 + 0.5 * x[:, 1]) == pytest.approx((2.0, 0.5))
    a, b = _nonnegative_line(x, 5.0 - 0.1 * x[:, 1])  # a falling cost is clipped to a constant
    assert b == 0.0 and a == pytest.approx(np.mean(5.0 - 0.1 * x[:, 1]))


def test_predictor_fits_once_per_architecture_and_is_cached(tmp_path: Path) -> None:
    model = _Net().eval()
    predictor = build_predictor(model, (1, 12, 12), FAST, tmp_path, leaders=["a"], keeps=(1.0, 0.5))
    assert predictor.overhead.intercept_ms >= 0 and predictor.overhead.per_activation_ms >= 0
    assert predictor(model) > 0
    entries = dict(predictor.table.layers)
    cached = build_predictor(model, (1, 12, 12), FAST, tmp_path, leaders=["a"], keeps=(1.0, 0.5))
    assert cached.overhead == predictor.overhead and cached.table.measured_layers == 0
    assert cached.table.layers == entries
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1


def test_int8_devices_profile_int8_layers(tmp_path: Path) -> None:
    int8 = dataclasses.replace(FAST, name="test-int8", runtime="torch-int8")
    table = LatencyTable.for_device(int8, tmp_path)
    calls = layer_calls(_Net(), (1, 12, 12), table.precision)
    assert table.layers_ms(calls) > 0
    assert all(key.endswith(":int8") for key in table.layers)
    assert table.path != LatencyTable.for_device(FAST, tmp_path).path
