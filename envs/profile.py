"""Device profiles: how to run and time a model on one device (the fields of ``configs/devices/*.yaml``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
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
    """Runtime that executes the model by default: a name in :data:`envs.runtimes.RUNTIMES` (the first of
    :attr:`runtimes`)."""
    runtimes: tuple[str, ...] = ()
    """Runtimes allowed on this hardware (YAML ``runtimes:``, a list), :attr:`runtime` first; empty (or one)
    means just :attr:`runtime`. With several, the search picks one per candidate; those this machine cannot run
    are left out with a warning."""
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
        given = self.runtimes
        if isinstance(given, str) or not isinstance(given, (list, tuple)):
            raise UsageError(f"device {self.name!r}: runtimes must be a list of runtime names, got {given!r}")
        for name in (self.runtime, *given):
            if not isinstance(name, str) or name not in RUNTIMES:
                raise UsageError(
                    f"device {self.name!r}: runtime {name!r} is not supported; use one of {', '.join(RUNTIMES.names())}"
                )
        names = tuple(dict.fromkeys(given))
        if len(names) <= 1:  # one runtime allowed: ``runtime`` says which (``replace(device, runtime=...)`` switches)
            names = (self.runtime,)
        if self.runtime not in names:
            raise UsageError(f"device {self.name!r}: runtime {self.runtime!r} is not one of its runtimes "
                             f"({', '.join(names)})")
        ordered = (self.runtime, *(name for name in names if name != self.runtime))
        object.__setattr__(self, "runtimes", _runnable_here(self.name, ordered))
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

    def on(self, runtime: str) -> DeviceProfile:
        """These hardware settings running ``runtime`` alone: what converts and times a candidate that runs on it.

        Raises:
            UsageError: for a runtime that is not registered.
        """
        if runtime == self.runtime and len(self.runtimes) == 1:
            return self
        return replace(self, runtime=runtime, runtimes=(runtime,))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML and reports."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["runtimes"] = list(self.runtimes)
        return data


def _runnable_here(device: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` less the runtimes this machine cannot run, each left out with a warning (a profile that allows one
    runtime keeps it: converting for it fails with the engine's own error).

    Raises:
        UsageError: when the profile's default runtime (the first) is one of them.
    """
    if len(names) == 1:
        return names
    missing = {name: RUNTIMES[name].unavailable() for name in names}
    if missing[names[0]] is not None:
        raise UsageError(f"device {device!r}: its default runtime {names[0]!r} cannot run on this machine "
                         f"({missing[names[0]]}); put a runtime it can run first")
    for name, reason in missing.items():
        if reason is not None:
            warnings.warn(f"device {device!r}: runtime {name!r} left out, this machine cannot run it ({reason})",
                          UserWarning, stacklevel=4)
    return tuple(name for name in names if missing[name] is None)


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
        runtimes = data.get("runtimes")
        if isinstance(runtimes, list) and "runtime" not in data:  # the first this machine can run is the default
            runnable = [r for r in runtimes if r in RUNTIMES and RUNTIMES[r].unavailable() is None]
            data["runtime"] = (runnable or runtimes or ["torch"])[0]
        if isinstance(runtimes, list):
            data["runtimes"] = tuple(runtimes)
            if data.get("runtime") not in runtimes:
                raise UsageError(f"device profile {path}: runtime {data.get('runtime')!r} is not one of its "
                                 f"runtimes ({', '.join(map(str, runtimes))})")
        return DeviceProfile(**data)
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        raise UsageError(f"device profile {path} is malformed: {exc}") from exc
