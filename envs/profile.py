"""Device profiles: how to run and time a model on one device (the fields of ``configs/devices/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from core.errors import UsageError
from envs.runtimes import RUNTIMES, Runtime


@dataclass(frozen=True)
class DeviceProfile:
    """How to run and time a model on one device."""

    name: str
    """Profile name (the YAML file's stem)."""
    runtime: str = "torch"
    """Runtime that executes the model: a name in :data:`envs.runtimes.RUNTIMES`."""
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
            raise UsageError(
                f"device {self.name!r}: runtime {self.runtime!r} is not supported; "
                f"use one of {', '.join(RUNTIMES.names())}"
            )
        for name in ("threads", "batch", "repeats", "channel_multiple"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"device {self.name!r}: {name} must be >= 1")
        if self.warmup < 0:
            raise UsageError(f"device {self.name!r}: warmup must be >= 0")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    @property
    def engine(self) -> Runtime:
        """The registered :class:`~envs.runtimes.Runtime` named by :attr:`runtime`."""
        return RUNTIMES[self.runtime]

    @property
    def int8(self) -> bool:
        """True when the runtime executes layers as int8 kernels."""
        return self.engine.int8

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML and reports."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        return data


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
