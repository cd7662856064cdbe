"""Non-dominated sets over (accuracy up, size down, latency down) (leaf module)."""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float, float]
"""(accuracy, size_bytes, latency_ms)."""


def dominates(a: Point, b: Point) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    no_worse = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    better = a[0] > b[0] or a[1] < b[1] or a[2] < b[2]
    return no_worse and better


def non_dominated(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates; of identical points only the first is kept."""
    front: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(q, p) for q in points):
            continue
        if any(tuple(points[j]) == tuple(p) for j in front):
            continue
        front.append(i)
    return front


def spread_subset(indices: Sequence[int], points: Sequence[Point], k: int) -> list[int]:
    """At most ``k`` of ``indices``, spread evenly along size, always including the most accurate one.

    The result is ordered by size.
    """

    def by_size(i: int) -> tuple[float, float]:
        return points[i][1], -points[i][0]

    ordered = sorted(indices, key=by_size)
    if len(ordered) <= k:
        return ordered
    chosen = [max(ordered, key=lambda i: (points[i][0], -points[i][1]))]
    positions = [round(s * (len(ordered) - 1) / max(1, k - 1)) for s in range(k)]
    for candidate in [ordered[p] for p in positions] + ordered:
        if len(chosen) >= k:
            break
        if candidate not in chosen:
            chosen.append(candidate)
    return sorted(chosen, key=by_size)
