"""Hardware budgets and human unit parsing (leaf module)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.errors import UsageError

_SIZE_UNITS = {
    "": 1_000_000,  # a bare number is megabytes
    "b": 1,
    "kb": 1_000,
    "mb": 1_000_000,
    "gb": 1_000_000_000,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_TIME_UNITS_MS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    match = re.fullmatch(rf"\s*([-+]?){_NUMBER}\s*([a-zA-Zµ]*)\s*", str(text))
    if not match:
        raise UsageError(f"cannot parse {what} {text!r}; write it like {example}")
    sign, number, unit = match.groups()
    value = float(number)
    if sign == "-" or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what} must be a positive number, got {text!r}")
    return value, unit.lower()


def parse_size(text: str | float | int) -> int:
    """Parses a size like ``5``, ``5MB``, ``512KB``, ``5MiB`` into bytes (bare numbers are MB).

    Raises:
        UsageError: when the text is not a positive size.
    """
    value, unit = _split(str(text), "size budget", "5, 5MB, 512KB or 5MiB")
    if unit not in _SIZE_UNITS:
        raise UsageError(f"unknown size unit {unit!r} in {text!r}; use B, KB, MB, GB, KiB, MiB or GiB")
    return int(round(value * _SIZE_UNITS[unit]))


def parse_latency(text: str | float | int) -> float:
    """Parses a latency like ``20ms``, ``0.02s``, ``500us`` into milliseconds (bare numbers are ms).

    Raises:
        UsageError: when the text is not a positive duration.
    """
    value, unit = _split(str(text), "latency target", "20ms, 0.02s or 500us")
    if unit not in _TIME_UNITS_MS:
        raise UsageError(f"unknown time unit {unit!r} in {text!r}; use ms, s or us")
    return value * _TIME_UNITS_MS[unit]


@dataclass(frozen=True)
class Budget:
    """What a compressed model must satisfy; ``None`` means unconstrained."""

    size_bytes: int | None = None
    """Largest allowed packed file, in bytes."""
    latency_ms: float | None = None
    """Largest allowed median latency on the device profile, in milliseconds."""

    def __post_init__(self) -> None:
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise ValueError("size budget must be positive")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise ValueError("latency target must be positive")

    def violations(self, size_bytes: float, latency_ms: float) -> list[float]:
        """Constraint values in Optuna's convention: feasible when every entry is <= 0.

        Each entry is the relative excess over the budget (0 when there is no budget).
        """
        size_excess = 0.0 if self.size_bytes is None else size_bytes / self.size_bytes - 1.0
        latency_excess = 0.0 if self.latency_ms is None else latency_ms / self.latency_ms - 1.0
        return [size_excess, latency_excess]

    def admits(self, size_bytes: float, latency_ms: float) -> bool:
        """True when both measurements are within budget."""
        return all(v <= 0 for v in self.violations(size_bytes, latency_ms))
