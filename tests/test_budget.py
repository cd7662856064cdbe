from __future__ import annotations

import pytest

from core.budget import Budget, parse_latency, parse_size
from core.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", 5_000_000), (5, 5_000_000), ("5MB", 5_000_000), ("512KB", 512_000), ("5MiB", 5 * 2**20),
     ("0.5mb", 500_000), ("1.5 KiB", 1536), ("300B", 300), ("1GB", 10**9)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("20ms", 20.0), ("20", 20.0), ("0.02s", 20.0), ("500us", 0.5), (" 7.5 ms ", 7.5)]
)
def test_latencies(text: str, expected: float) -> None:
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["-5", "0", "five", "5XB", "", "nan", "--3", "5 MB MB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text", ["-20ms", "0ms", "20 parsecs", "fast"])
def test_bad_latencies(text: str) -> None:
    with pytest.raises(UsageError):
        parse_latency(text)


def test_constraints_follow_optuna_convention() -> None:
    budget = Budget(size_bytes=1000, latency_ms=10.0)
    assert budget.violations(500, 5.0) == [-0.5, -0.5]
    assert budget.admits(1000, 10.0)
    assert not budget.admits(1001, 10.0)
    assert not budget.admits(1000, 10.01)
    assert budget.violations(2000, 20.0) == [1.0, 1.0]
    assert Budget().admits(10**12, 1e9)
