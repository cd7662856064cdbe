"""Device profiles name the hardware and the runtimes allowed on it (``runtimes:``); errors are one line."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from core.errors import UsageError
from envs.device import list_devices, load_device, read_profile
from envs.latency_model import profile_digest
from envs.profile import DeviceProfile
from envs.runtimes import RUNTIMES, Runtime, register


def _one_line_error(match: str, **fields: object) -> str:
    with pytest.raises(UsageError, match=match) as caught:
        DeviceProfile(name="x", **fields)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_profile_without_runtimes_allows_just_its_runtime() -> None:
    assert DeviceProfile(name="x").runtimes == ("torch",)
    assert DeviceProfile(name="x", runtime="torch-int8").runtimes == ("torch-int8",)
    for name in list_devices():
        if name not in ("auto", "cpu-any"):
            device = load_device(name)
            assert device.runtimes == (device.runtime,)


def test_cpu_any_allows_every_runtime_this_machine_runs_with_torch_first() -> None:
    device = load_device("cpu-any")
    runnable = [name for name, runtime in RUNTIMES.items() if runtime.unavailable() is None]
    assert device.runtime == "torch" and device.runtimes == tuple(runnable)
    b32 = load_device("cpu-b32")
    assert (device.threads, device.batch, device.warmup, device.repeats) == (b32.threads, b32.batch, b32.warmup,
                                                                            b32.repeats)
    assert profile_digest(device.on("torch")) == profile_digest(b32)  # one latency table per runtime and hardware
    assert profile_digest(device.on("torch-int8")) != profile_digest(b32)


def test_every_runtime_is_checked_against_the_registry() -> None:
    text = _one_line_error("runtime 'tvm' is not supported; use one of torch, torch-int8",
                           runtimes=("torch", "tvm"))
    assert text.startswith("device 'x': ")
    _one_line_error("runtime 'torch' is not one of its runtimes", runtimes=("torch-int8", "onnxruntime"))
    _one_line_error("runtimes must be a list", runtimes="torch")
    _one_line_error("is not supported", runtimes=(["torch"],))


def test_the_default_runtime_comes_first_and_on_runs_one_alone() -> None:
    device = DeviceProfile(name="x", runtime="torch-int8", runtimes=("torch", "torch-int8", "torch"))
    assert device.runtimes == ("torch-int8", "torch")
    assert replace(device, runtime="torch").runtimes == ("torch", "torch-int8")
    int8 = device.on("torch")
    assert (int8.runtime, int8.runtimes, int8.threads) == ("torch", ("torch",), device.threads)
    single = DeviceProfile(name="y")
    assert single.on("torch") is single
    with pytest.raises(UsageError, match="tvm"):
        device.on("tvm")


def test_yaml_runtimes_list_and_its_default(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("runtimes: [onnxruntime, torch]\nthreads: 1\n")
    device = read_profile(path, "two")
    assert device.runtime == "onnxruntime" and device.runtimes == ("onnxruntime", "torch")
    assert read_profile(path, "two").to_dict()["runtimes"] == ["onnxruntime", "torch"]
    path.write_text("runtime: torch\nruntimes: torch\n")
    with pytest.raises(UsageError, match="runtimes must be a list"):
        read_profile(path, "two")
    path.write_text("runtime: torch\nruntimes: [torch-int8]\n")
    with pytest.raises(UsageError, match="runtime 'torch' is not one of its runtimes \\(torch-int8\\)"):
        read_profile(path, "two")
    assert replace(load_device("cpu-b32"), runtime="torch-int8").runtimes == ("torch-int8",)  # switches


class _Missing(Runtime):
    """A runtime whose engine this machine lacks."""

    name = "test-missing"
    int8 = False
    tolerance = 0.0

    def unavailable(self) -> str | None:
        return "test-engine is not installed"

    def build(self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
              ) -> nn.Module:
        raise AssertionError("never converted")


@pytest.fixture
def missing_runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setattr(RUNTIMES, "_entries", dict(RUNTIMES._entries))
    return register(_Missing())


def test_a_runtime_this_machine_cannot_run_is_left_out_with_a_warning(missing_runtime: Runtime,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("runtimes: [test-missing, torch, torch-int8]\n")
    with pytest.warns(UserWarning, match="runtime 'test-missing' left out, this machine cannot run it "
                                         r"\(test-engine is not installed\)"):
        device = read_profile(path, "p")
    assert device.runtime == "torch" and device.runtimes == ("torch", "torch-int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert replace(device, batch=1).runtimes == device.runtimes  # no second warning
    _one_line_error("its default runtime 'test-missing' cannot run on this machine",
                    runtime="test-missing", runtimes=("test-missing", "torch"))
    assert DeviceProfile(name="x", runtime="test-missing").runtimes == ("test-missing",)  # fails when converting
