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


def test_pareto_csv_and_table_name_each_model_runtime(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    import csv

    from core.policy import LayerChoice, Policy
    from search.export import ExportedModel, write_pareto_csv
    from search.report import pareto_table

    def model(rank: int, runtime: str) -> ExportedModel:
        policy = Policy.from_choices({"fc": LayerChoice(0.5, 4)}, runtime=runtime)
        return ExportedModel(rank=rank, model_file=f"models/m{rank}.acz", trial=rank, policy=policy,
                             search_val_accuracy=0.9, val_accuracy=0.9, test_accuracy=0.9, size_bytes=1000,
                             latency_ms=1.0, latency_spread_ms=0.1, predicted_latency_ms=None, macs=10, params=10,
                             compression_ratio=4.0, runtime=runtime)

    models = [model(0, "torch"), model(1, "onnxruntime-int8")]
    write_pareto_csv(tmp_path / "pareto.csv", models)
    with open(tmp_path / "pareto.csv", newline="") as handle:
        assert [row["runtime"] for row in csv.DictReader(handle)] == ["torch", "onnxruntime-int8"]
    table = pareto_table(models).splitlines()
    assert "| runtime |" in table[0] and "| onnxruntime-int8 |" in table[3]
    assert len({line.count("|") for line in table}) == 1
    assert "runtime" not in pareto_table([models[0]])  # one runtime: no column


def test_pareto_csv_and_table_show_a_lower_is_better_metric_under_its_name(tmp_path) -> None:  # noqa: ANN001
    import csv

    from core.metric import MetricSpec
    from core.policy import LayerChoice, Policy
    from search.export import ExportedModel, write_pareto_csv
    from search.report import pareto_table

    bpc = MetricSpec("bpc", False)
    model = ExportedModel(rank=0, model_file="models/m0.acz", trial=0, policy=Policy.from_choices(
        {"fc": LayerChoice(0.5, 4)}), search_val_accuracy=-2.5, val_accuracy=-2.25, test_accuracy=-2.125,
        size_bytes=1000, latency_ms=1.0, latency_spread_ms=0.1, predicted_latency_ms=None, macs=10, params=10,
        compression_ratio=4.0, metric=bpc)
    write_pareto_csv(tmp_path / "pareto.csv", [model], bpc)
    with open(tmp_path / "pareto.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (float(row["test_bpc"]), float(row["val_bpc"]), float(row["search_val_bpc"])) == (2.125, 2.25, 2.5)
    table = pareto_table([model]).splitlines()
    assert "| test bpc | val bpc |" in table[0] and "| 2.1250 | 2.2500 |" in table[2]
