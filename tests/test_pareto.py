from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from search.pareto import dominates, non_dominated, spread_subset

points = st.lists(
    st.tuples(st.floats(0, 1), st.integers(1, 100).map(float), st.integers(1, 100).map(float)), min_size=1, max_size=40
)


@given(points)
def test_front_is_non_dominated_and_covers_the_rest(pts: list) -> None:
    front = non_dominated(pts)
    assert front
    for i in front:
        assert not any(dominates(q, pts[i]) for q in pts)
    for j in range(len(pts)):
        if j not in front:
            assert any(dominates(pts[i], pts[j]) or tuple(pts[i]) == tuple(pts[j]) for i in front)


def test_known_front() -> None:
    pts = [(0.9, 10.0, 5.0), (0.8, 5.0, 5.0), (0.7, 6.0, 6.0), (0.95, 20.0, 1.0), (0.9, 10.0, 5.0)]
    assert non_dominated(pts) == [0, 1, 3]


@given(points, st.integers(1, 8))
def test_spread_subset_keeps_the_most_accurate(pts: list, k: int) -> None:
    front = non_dominated(pts)
    chosen = spread_subset(front, pts, k)
    assert len(chosen) == min(k, len(front))
    assert set(chosen) <= set(front)
    best = max(front, key=lambda i: (pts[i][0], -pts[i][1]))
    assert best in chosen
    assert [pts[i][1] for i in chosen] == sorted(pts[i][1] for i in chosen)
