from __future__ import annotations

import numpy as np
import pytest

from core.policy import LayerChoice
from core.space import SearchSpace, SpaceSettings
from core.spec import LayerSpec


class _Grid:
    """Records the grids the space asks for and picks their first element."""

    def __init__(self) -> None:
        self.asked: dict[str, tuple] = {}

    def float(self, name: str, low: float, high: float, step: float) -> float:
        self.asked[name] = (low, high, step)
        return low

    def categorical(self, name: str, choices: list[int]) -> int:
        self.asked[name] = tuple(choices)
        return choices[0]


def test_sample_asks_one_decision_per_choice_and_keep_only_for_leaders() -> None:
    space = SearchSpace(("a", "b", "c"), ("a",), SpaceSettings(bits=(4, 8, 32), sparsity_max=0.9))
    grid = _Grid()
    space.sample(grid)
    assert grid.asked["a.sparsity"] == (0.0, 0.9, 0.05)
    assert grid.asked["b.bits"] == (4, 8, 32)
    assert grid.asked["a.keep"] == (0.25, 1.0, 0.125)
    assert "b.keep" not in grid.asked and "c.keep" not in grid.asked


def test_channel_pruning_can_be_switched_off() -> None:
    space = SearchSpace(("a", "b"), ("a",), SpaceSettings(channel_pruning=False))
    grid = _Grid()
    policy = space.sample(grid)
    assert not any(k.endswith(".keep") for k in grid.asked)
    assert all(choice.keep == 1.0 for _, choice in policy)


def test_most_compressed_is_the_extreme_of_every_grid() -> None:
    space = SearchSpace(("a", "b"), ("a",), SpaceSettings(bits=(3, 8), sparsity_max=0.93, keep_min=0.3))
    policy = space.most_compressed()
    assert policy["a"] == LayerChoice(sparsity=0.9, bits=3, keep=0.375)  # 1 - 5 steps of 0.125 >= 0.3
    assert policy["b"].keep == 1.0


def test_rank_and_saliency_are_searched_when_offered() -> None:
    specs = (
        LayerSpec("a", "conv", 8, 16, 3, 1, 1, 8, 8, 1152, 73728),
        LayerSpec("b", "depthwise", 16, 16, 3, 1, 16, 8, 8, 144, 9216),
    )
    settings = SpaceSettings(ranks=(0.5, 0.25, 1.0), saliencies=("obd", "taylor"), channel_importances=("bn", "l2"))
    space = SearchSpace(("a", "b"), (), settings, specs)
    grid = _Grid()
    policy = space.sample(grid)
    assert grid.asked["a.rank"] == (0.25, 0.5, 1.0) and "b.rank" not in grid.asked  # depthwise: no rank
    assert grid.asked["saliency"] == ("obd", "taylor") and policy.saliency == "obd"
    assert "channel_importance" not in grid.asked and policy.channel_importance == "bn"  # no leaders: no choice
    grid = _Grid()
    with_leaders = SearchSpace(("a", "b"), ("a",), settings, specs).sample(grid)
    assert grid.asked["channel_importance"] == ("bn", "l2") and with_leaders.channel_importance == "bn"
    assert policy["a"].rank == 0.25 and policy["b"].rank == 1.0
    smallest = space.most_compressed()
    assert smallest["a"].rank == 0.25 and smallest["b"].rank == 1.0
    default = SearchSpace(("a", "b"), (), SpaceSettings(), specs)
    grid = _Grid()
    assert default.sample(grid).saliency == "magnitude"
    assert not any(k.endswith(".rank") or k == "saliency" for k in grid.asked)


@pytest.mark.parametrize("field", ["saliencies", "channel_importances"])
@pytest.mark.parametrize("value", [(), "magnitude", ("l1", ""), (3,)])
def test_criteria_settings_must_be_names(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SpaceSettings(**{field: value})


def test_params_inverts_sample() -> None:
    settings = SpaceSettings(ranks=(0.5, 1.0), saliencies=("magnitude", "taylor"), channel_importances=("l1", "bn"))
    space = SearchSpace(("a", "b"), ("b",), settings)
    rng = np.random.default_rng(0)

    class _Random:
        def float(self, name: str, low: float, high: float, step: float) -> float:
            return round(low + step * int(rng.integers(0, round((high - low) / step) + 1)), 6)

        def categorical(self, name: str, choices: list[int]) -> int:
            return choices[int(rng.integers(len(choices)))]

    policy = space.sample(_Random())
    values = space.params(policy)

    class _Replay:
        def float(self, name: str, *_: float) -> float:
            return values[name]

        def categorical(self, name: str, _: list[int]) -> int:
            return values[name]

    assert space.sample(_Replay()) == policy


def test_runtime_is_one_searched_choice_only_when_several_are_allowed() -> None:
    settings = SpaceSettings(ranks=(0.5, 1.0))
    single = SearchSpace(("a", "b"), ("a",), settings, runtimes=("torch",))
    grid = _Grid()
    assert single.sample(grid).runtime is None and "runtime" not in grid.asked
    assert "runtime" not in single.params(single.sample(_Grid())) and single.most_compressed().runtime is None
    several = SearchSpace(("a", "b"), ("a",), settings, runtimes=("torch", "torch-int8", "onnxruntime", "torch"))
    assert several.runtimes == ("torch", "torch-int8", "onnxruntime") and several.searches_runtime
    grid = _Grid()
    policy = several.sample(grid)
    assert grid.asked["runtime"] == ("torch", "torch-int8", "onnxruntime") and policy.runtime == "torch"
    assert list(grid.asked)[0] == "runtime"  # the global choice comes first
    assert several.params(policy)["runtime"] == "torch"
    assert several.params(single.sample(_Grid()))["runtime"] == "torch"  # unset = the profile's default
    assert several.most_compressed().runtime == "torch"
    assert several.most_compressed(runtime="onnxruntime").runtime == "onnxruntime"
    rng = np.random.default_rng(1)

    class _Random:
        def float(self, name: str, low: float, high: float, step: float) -> float:
            return round(low + step * int(rng.integers(0, round((high - low) / step) + 1)), 6)

        def categorical(self, name: str, choices: list) -> object:
            return choices[int(rng.integers(len(choices)))]

    sampled = [several.sample(_Random()) for _ in range(20)]
    assert {p.runtime for p in sampled} == set(several.runtimes)
    class _Replay:
        def __init__(self, values: dict) -> None:
            self.values = values

        def float(self, name: str, *_: float) -> float:
            return self.values[name]

        def categorical(self, name: str, _: list) -> object:
            return self.values[name]

    assert all(several.sample(_Replay(several.params(policy))) == policy for policy in sampled)
    with pytest.raises(ValueError, match="runtimes"):
        SearchSpace(("a",), (), settings, runtimes=("torch", ""))
