"""Conformance suite for device runtimes: every entry of ``envs.runtimes.RUNTIMES`` is checked the same way.

A runtime must convert a small BatchNorm CNN and an MLP to within its stated tolerance of fp32 on a fixed batch,
refuse at least one model of the hostile catalogue (and every refusal is one ``RuntimeConversionError`` with a
one-line message), give positive latency-table entries for a Conv2d and a Linear layer and a non-negative
per-call cost, and leave the original model untouched. A runtime whose engine this machine lacks is skipped.
A new runtime is picked up without editing this file (unless it accepts every model of the catalogue: then add
one it refuses).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from core.errors import UsageError
from envs.latency_model import LatencyTable, layer_calls
from envs.profile import DeviceProfile
from envs.runtimes import RUNTIMES, Runtime, RuntimeConversionError, output_error, register, runnable_for
from envs.timing import time_forward

SHAPE = (1, 12, 12)
"""One sample of every model below."""
BATCH = torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(0))
"""The fixed batch: calibration inputs and the inputs compared against fp32."""


def _with_random_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm statistics and affine parameters (so folding matters)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model.eval()


def bn_cnn() -> nn.Module:
    """A small Conv-BatchNorm-ReLU network."""
    torch.manual_seed(0)
    return _with_random_batchnorm(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ))


def mlp() -> nn.Module:
    """A small multi-layer perceptron."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


class _Branchy(nn.Module):
    """Data-dependent Python control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class _Svd(nn.Module):
    """An operator without an ONNX mapping (``linalg_svdvals``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(self.fc(x.flatten(1)).view(x.shape[0], 10, 10))


def _off_cpu() -> nn.Module:
    """Parameters that are not on the CPU (the ``meta`` device, as deferred initialisation leaves them)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 10, device="meta"))


HOSTILE: dict[str, Callable[[], nn.Module]] = {
    "data-dependent control flow": lambda: _Branchy().eval(),
    "operator without an ONNX mapping": lambda: _Svd().eval(),
    "parameters off the CPU": _off_cpu,
}
"""Models some runtimes cannot take; each runtime must refuse at least one."""


def profile_for(runtime: Runtime) -> DeviceProfile:
    """A fast profile on ``runtime``."""
    return DeviceProfile(name=f"conformance-{runtime.name}", runtime=runtime.name, threads=1, batch=16,
                         warmup=1, repeats=3)


def check_matches_fp32(runtime: Runtime) -> dict[str, float]:
    """Converts the BatchNorm CNN and the MLP; both stay within the runtime's tolerance. Returns the errors."""
    errors = {}
    for build in (bn_cnn, mlp):
        model = build()
        converted = runtime.convert(model, SHAPE, 1, BATCH)
        assert isinstance(converted, nn.Module)
        with torch.inference_mode():
            errors[build.__name__] = output_error(model(BATCH), converted(BATCH))
    assert all(error <= runtime.tolerance for error in errors.values()), (errors, runtime.tolerance)
    return errors


def check_refusals(runtime: Runtime) -> list[str]:
    """Converts every hostile model: each refusal is one one-line ``RuntimeConversionError`` naming the runtime,
    and at least one model is refused. Returns the refused models' descriptions."""
    refused = []
    for what, build in HOSTILE.items():
        try:
            runtime.convert(build(), SHAPE, 1, BATCH)
        except RuntimeConversionError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"runtime {runtime.name!r} cannot run the model: ")
            assert not isinstance(exc.__cause__, RuntimeConversionError), "one error, not a chain of them"
            refused.append(what)
    assert refused, f"runtime {runtime.name!r} accepts every model of HOSTILE; add one it refuses"
    return refused


def check_table_entries(runtime: Runtime, cache_dir: Path) -> list[float]:
    """A latency-table entry for a Conv2d and for a Linear layer is a positive, finite number of milliseconds."""
    table = LatencyTable.for_device(profile_for(runtime), cache_dir)
    entries = []
    for layer, shape in ((nn.Conv2d(16, 32, 3, padding=1), (16, 16, 16)), (nn.Linear(1024, 1024), (1024,))):
        (call,) = layer_calls(nn.Sequential(layer), shape, table.precision)
        entries.append(table.layer_ms(call))
    assert all(0 < ms < math.inf for ms in entries), entries
    assert all(key.endswith(":int8" if runtime.int8 else ":fp32") for key in table.layers)
    return entries


def check_call_cost(runtime: Runtime) -> float:
    """The per-call cost is a non-negative, finite number of milliseconds."""
    device = profile_for(runtime)
    cost = runtime.call_cost_ms(BATCH[:8], 1, lambda module, x: time_forward(module, x, device))
    assert 0 <= cost < math.inf
    return cost


def check_leaves_original(runtime: Runtime) -> None:
    """Converting (a model in training mode) changes neither the model's tensors nor its modes."""
    for build in (bn_cnn, mlp):
        model = build().train()
        before = copy.deepcopy(model.state_dict())
        runtime.convert(model, SHAPE, 1, BATCH)
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert all(module.training for module in model.modules())


def check_profile(runtime: Runtime) -> None:
    """A device profile accepts the runtime's name and takes ``int8`` from the registered runtime."""
    device = profile_for(runtime)
    assert device.engine is runtime and device.int8 == runtime.int8
    assert isinstance(runnable_for(mlp(), device, SHAPE, BATCH), nn.Module)


CHECKS = (check_profile, check_matches_fp32, check_refusals, check_call_cost, check_leaves_original)
"""Every check that needs no folder (``check_table_entries`` needs one)."""


@pytest.fixture(params=RUNTIMES.names())
def runtime(request: pytest.FixtureRequest) -> Runtime:
    """Each registered runtime; skipped where this machine cannot run it."""
    entry = RUNTIMES[request.param]
    reason = entry.unavailable()
    if reason:
        pytest.skip(f"runtime {entry.name!r}: {reason}")
    return entry


def test_runtime_declares_its_name_precision_and_tolerance(runtime: Runtime) -> None:
    assert RUNTIMES[runtime.name] is runtime
    assert isinstance(runtime.int8, bool) and 0 <= runtime.tolerance < 1
    check_profile(runtime)


def test_conversion_is_within_the_stated_tolerance_of_fp32(runtime: Runtime) -> None:
    check_matches_fp32(runtime)


def test_a_model_the_runtime_cannot_take_gets_one_one_line_error(runtime: Runtime) -> None:
    check_refusals(runtime)


def test_table_entries_are_positive_milliseconds(runtime: Runtime, tmp_path: Path) -> None:
    check_table_entries(runtime, tmp_path)


def test_per_call_cost_is_not_negative(runtime: Runtime) -> None:
    check_call_cost(runtime)


def test_conversion_leaves_the_original_model_untouched(runtime: Runtime) -> None:
    check_leaves_original(runtime)


def test_built_in_runtimes_refuse_what_their_tooling_cannot_take() -> None:
    """The refusals the built-in runtimes are known for (a real model for each)."""
    expected = {
        "torch": ["parameters off the CPU"],
        "torch-int8": ["data-dependent control flow", "parameters off the CPU"],
        "onnxruntime": ["operator without an ONNX mapping", "parameters off the CPU"],
        "onnxruntime-int8": ["operator without an ONNX mapping", "parameters off the CPU"],
    }
    for name, refused in expected.items():
        if RUNTIMES[name].unavailable() is None:
            assert check_refusals(RUNTIMES[name]) == refused, name


def test_a_profile_refuses_an_unregistered_runtime() -> None:
    with pytest.raises(UsageError, match="runtime 'tvm' is not supported; use one of torch, torch-int8"):
        DeviceProfile(name="x", runtime="tvm")


class _CopyRuntime(Runtime):
    """A fake runtime: a deep copy of the model, run eagerly. Named like an int8 runtime, but fp32: a profile
    asks the registry, not the name."""

    name = "test-copy-int8"
    int8 = False
    tolerance = 0.0

    def build(
        self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        return copy.deepcopy(model).eval()


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """``_CopyRuntime`` registered for one test (the registry's entries are restored afterwards)."""
    monkeypatch.setattr(RUNTIMES, "_entries", dict(RUNTIMES._entries))
    return register(_CopyRuntime())


def test_a_new_runtime_is_one_class_and_one_registration(fake_runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        DeviceProfile(name="x", runtime="test-other")
    device = DeviceProfile(name="fake", runtime="test-copy-int8")
    assert device.engine is fake_runtime and not device.int8
    for check in CHECKS:
        check(fake_runtime)
    assert check_table_entries(fake_runtime, tmp_path)
    assert check_refusals(fake_runtime) == ["parameters off the CPU"]
