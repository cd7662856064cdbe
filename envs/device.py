"""Device profiles (configs/devices/*.yaml) and latency measured by running the model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from core.errors import UsageError
from core.paths import DEVICES_DIR

DEFAULT_DEVICE = "cpu-b32"
RUNTIMES = ("torch", "torch-int8", "onnxruntime", "onnxruntime-int8")
"""``torch``: eager fp32 PyTorch; ``torch-int8``: static int8 on PyTorch's x86 backend (``methods/int8.py``);
``onnxruntime`` / ``onnxruntime-int8``: the ONNX export on ONNX Runtime's CPU provider, fp32 or static int8
(``methods/onnx_runtime.py``). ``envs/runtimes.py`` converts a model for each."""


@dataclass(frozen=True)
class DeviceProfile:
    """How to run and time a model on one device."""

    name: str
    """Profile name (the YAML file's stem)."""
    runtime: str = "torch"
    """Runtime that executes the model: one of :data:`RUNTIMES`."""
    threads: int = 2
    """Intra-op threads while timing."""
    batch: int = 32
    """Batch size of one timed forward pass."""
    input_shape: tuple[int, ...] | None = None
    """Shape of one sample; ``None`` takes the task's."""
    warmup: int = 3
    """Untimed forward passes before timing."""
    repeats: int = 10
    """Timed forward passes; the latency is their median."""
    channel_multiple: int = 1
    """Kept channel counts are rounded to this multiple."""
    ray_resource: str | None = None
    """Ray custom resource naming the node that holds this device."""
    description: str = ""
    """Free text shown in reports."""

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise UsageError(f"device {self.name!r}: runtime {self.runtime!r} is not supported; use one of {RUNTIMES}")
        for name in ("threads", "batch", "repeats", "channel_multiple"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"device {self.name!r}: {name} must be >= 1")
        if self.warmup < 0:
            raise UsageError(f"device {self.name!r}: warmup must be >= 0")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    @property
    def int8(self) -> bool:
        """True when models run as static int8."""
        return self.runtime.endswith("-int8")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML and reports."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        return data


AUTO_DEVICE = "auto"
"""Device name that profiles this machine once and caches the profile (``envs/device_auto.py``)."""


def list_devices(devices_dir: Path = DEVICES_DIR) -> list[str]:
    """Names of the shipped device profiles, then ``auto``."""
    return sorted(p.stem for p in devices_dir.glob("*.yaml")) + [AUTO_DEVICE]


def load_device(name: str, devices_dir: Path = DEVICES_DIR) -> DeviceProfile:
    """Loads ``configs/devices/<name>.yaml``, or this machine's profile for ``auto``.

    Raises:
        UsageError: for an unknown name or a malformed profile.
    """
    if name == AUTO_DEVICE:
        from envs.device_auto import auto_device  # local: profiling imports the int8 tooling

        return auto_device()
    path = devices_dir / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        known = ", ".join(list_devices(devices_dir)) or "none"
        raise UsageError(f"unknown device {name!r}; choose one of: {known}")
    return read_profile(path, name)


def read_profile(path: Path, name: str) -> DeviceProfile:
    """Reads one profile file.

    Raises:
        UsageError: for a malformed profile.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
        known_fields = {f.name for f in fields(DeviceProfile)}
        unknown = set(data) - known_fields
        if unknown:
            raise UsageError(f"device profile {path} has unknown fields: {', '.join(sorted(unknown))}")
        data["name"] = name
        return DeviceProfile(**data)
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        raise UsageError(f"device profile {path} is malformed: {exc}") from exc


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> float:
    """Median wall time in milliseconds of one forward pass at the profile's batch and threads."""
    shape = device.input_shape or tuple(input_shape)
    example = torch.randn(device.batch, *shape, generator=torch.Generator().manual_seed(0))
    return time_forward(model, example, device)


def time_forward(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> float:
    """Median wall time in milliseconds of ``model(example)`` with the profile's threads, warm-up and repeats."""
    previous_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(device.threads)
    try:
        with torch.inference_mode():
            for _ in range(device.warmup):
                model(example)
            times = []
            for _ in range(device.repeats):
                start = time.perf_counter()
                model(example)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return 1000.0 * statistics.median(times)
