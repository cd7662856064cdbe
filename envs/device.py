"""Device profiles by name: the shipped ``configs/devices/*.yaml`` and ``auto`` (this machine, profiled once).

This is the public entry point for devices; the profile type lives in ``envs/profile.py``, timing in
``envs/timing.py``, runtimes in ``envs/runtimes/`` and ``auto`` in ``envs/device_auto.py``.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UsageError
from core.paths import DEVICES_DIR
from envs.device_auto import AUTO_DEVICE, auto_device
from envs.profile import DeviceProfile, read_profile
from envs.timing import measure_latency, time_forward

__all__ = [
    "AUTO_DEVICE", "DEFAULT_DEVICE", "DeviceProfile", "list_devices", "load_device", "measure_latency",
    "read_profile", "time_forward",
]

DEFAULT_DEVICE = "cpu-b32"


def list_devices(devices_dir: Path = DEVICES_DIR) -> list[str]:
    """Names of the shipped device profiles, then ``auto``."""
    return sorted(p.stem for p in devices_dir.glob("*.yaml")) + [AUTO_DEVICE]


def load_device(name: str, devices_dir: Path = DEVICES_DIR) -> DeviceProfile:
    """Loads ``configs/devices/<name>.yaml``, or this machine's profile for ``auto``.

    Raises:
        UsageError: for an unknown name or a malformed profile.
    """
    if name == AUTO_DEVICE:
        return auto_device()
    path = devices_dir / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        known = ", ".join(list_devices(devices_dir)) or "none"
        raise UsageError(f"unknown device {name!r}; choose one of: {known}")
    return read_profile(path, name)
