"""The budget wall: the clamp over whole episodes, and its calibrated size bound against real packed files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.policy import LayerChoice, Policy
from core.space import SearchSpace, SpaceSettings
from core.spec import LayerSpec
from search.searchers.rl.budget_wall import (
    CostModel,
    LatencyCurve,
    LayerShape,
    Limits,
    apply_wall,
    clamp_levels,
)
from search.searchers.rl.environment import ActionGrid


def _monotone_fits(threshold: np.ndarray):
    """Fits when every level reaches its threshold: monotone along any path toward 1."""
    return lambda levels: bool(np.all(levels >= threshold - 1e-12))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_clamp_moves_toward_compression_only_as_far_as_needed(data: st.DataObject) -> None:
    dims = data.draw(st.integers(1, 3))
    proposed = np.array(data.draw(st.lists(st.floats(0, 1), min_size=dims, max_size=dims)))
    movable = np.array(data.draw(st.lists(st.booleans(), min_size=dims, max_size=dims)))
    threshold = np.array(data.draw(st.lists(st.floats(0, 1), min_size=dims, max_size=dims)))
    fits = _monotone_fits(np.where(movable, threshold, 0.0))
    out = clamp_levels(proposed, movable, fits, resolution=32)
    assert np.all(out[~movable] == proposed[~movable])
    assert np.all(out >= proposed - 1e-12) and np.all(out <= 1.0)
    assert fits(out)
    if not fits(proposed):  # one grid step less compression would not fit
        widest = int(np.argmax(np.where(movable, 1 - proposed, -1)))  # recover the path step from the widest dim
        step = int(round((out[widest] - proposed[widest]) / (1 - proposed[widest]) * 32))
        before = proposed.copy()
        before[movable] = proposed[movable] + (step - 1) / 32 * (1.0 - proposed[movable])
        assert not fits(before)


def _chain(widths: list[int], kinds: list[str]) -> list[LayerSpec]:
    """A plain chain of conv/linear layers: layer i maps widths[i] -> widths[i + 1]."""
    specs = []
    for i, kind in enumerate(kinds):
        cin, cout = widths[i], widths[i + 1]
        kernel, hw = (3, 8) if kind == "conv" else (1, 1)
        params = cin * cout * kernel * kernel
        specs.append(LayerSpec(f"l{i}", kind, cin, cout, kernel, 1, 1, hw, hw, params, params * hw * hw))
    return specs


def _model(specs: list[LayerSpec], rest: int, latency: LatencyCurve) -> CostModel:
    """Cost model of a chain: leader i's channels are layer i's outputs and layer i + 1's inputs."""
    groups = len(specs) - 1
    out = [[1.0 if g == i else 0.0 for g in range(groups)] for i in range(len(specs))]
    inn = [[1.0 if g == i - 1 else 0.0 for g in range(groups)] for i in range(len(specs))]
    return CostModel(tuple(LayerShape.from_spec(s) for s in specs), rest, tuple(s.out_channels for s in specs[:-1]),
                     tuple(range(groups)), tuple(map(tuple, out)), tuple(map(tuple, inn)), latency=latency)


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(2, 48), min_size=2, max_size=6),
    conv=st.lists(st.booleans(), min_size=5, max_size=5),
    mode=st.sampled_from(["prune", "bits", "joint"]),
    size_fraction=st.floats(0.0, 1.0),
    latency_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_wall_keeps_random_episodes_within_budget(widths: list[int], conv: list[bool], mode: str,
                                                  size_fraction: float, latency_fraction: float, seed: int) -> None:
    kinds = ["conv" if c else "linear" for c in conv[: len(widths) - 1]]
    specs = _chain(widths, kinds)
    space = SearchSpace(tuple(s.name for s in specs), tuple(s.name for s in specs[:-1]),
                        SpaceSettings(bits=(2, 4, 8, 32)), tuple(specs))
    grid = ActionGrid.from_space(space, mode)
    leaders = [name in space.leaders for name in space.layers]
    most = [grid.choice(np.ones(len(grid.dims)), leader) for leader in leaders]
    dense_macs = sum(s.macs for s in specs)
    model = _model(specs, rest=500, latency=LatencyCurve.fit([(0, 1.0), (dense_macs, 9.0)], margin=0.1))
    low, high = model.costs(most), model.costs([LayerChoice()] * len(specs))
    # limits between the most compressed episode (which must fit) and no compression; on tiny layers
    # codes + scales can outweigh fp32, so "no compression" may be the smaller one
    limits = Limits(low.size_bytes + size_fraction * max(high.size_bytes - low.size_bytes, 0),
                    low.latency_ms + latency_fraction * (high.latency_ms - low.latency_ms) + 1e-9,
                    low.macs + latency_fraction * (high.macs - low.macs) if mode == "prune" else None)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        choices: list[LayerChoice] = []
        for t, leader in enumerate(leaders):
            decode = lambda lv, leader=leader: grid.choice(lv, leader)  # noqa: E731
            levels = apply_wall(rng.uniform(0, 1, len(grid.dims)), t, choices, decode, most, model, limits,
                                grid.speed_dims(leader))
            choices.append(decode(levels))
        costs = model.costs(choices)
        assert costs.fits(limits), (costs, limits)
        for choice in choices:  # nothing is pruned to nothing
            assert choice.keep >= space.settings.keep_min and choice.sparsity <= space.settings.sparsity_max


def test_wall_leaves_feasible_actions_alone_and_latency_moves_only_keep() -> None:
    specs = _chain([16, 32, 32, 10], ["conv", "conv", "linear"])
    space = SearchSpace(tuple(s.name for s in specs), ("l0", "l1"), SpaceSettings(quantizers=("linear",)), tuple(specs))
    grid = ActionGrid.from_space(space, "joint")
    most = [grid.choice(np.ones(3), name in space.leaders) for name in space.layers]
    dense_macs = sum(s.macs for s in specs)
    model = _model(specs, rest=500, latency=LatencyCurve.fit([(0, 1.0), (dense_macs, 9.0)], margin=0.0))
    decode = lambda lv: grid.choice(lv, True)  # noqa: E731
    proposed = np.array([0.1, 0.1, 0.1])
    assert np.array_equal(apply_wall(proposed, 0, [], decode, most, model, Limits(), grid.speed_dims(True)), proposed)
    free = apply_wall(proposed, 0, [], decode, most, model, Limits(size_bytes=10**9), grid.speed_dims(True))
    assert np.array_equal(free, proposed)
    tight = Limits(latency_ms=model.costs(most).latency_ms * 1.5)
    moved = apply_wall(proposed, 0, [], decode, most, model, tight, grid.speed_dims(True))
    assert moved[2] > proposed[2] and np.array_equal(moved[:2], proposed[:2])


def test_latency_curve_is_monotone_and_clamped() -> None:
    model = LatencyCurve.fit([(100, 2.0), (50, 3.0), (200, 4.0), (100, 1.0)], margin=0.5)
    assert model.ms == (3.0, 3.0, 4.0)
    assert model.predict(10) == pytest.approx(4.5) and model.predict(10**6) == pytest.approx(6.0)
    predictions = [model.predict(m) for m in range(0, 300, 7)]
    assert predictions == sorted(predictions)


@pytest.mark.parametrize(
    ("task", "finetune_steps", "tight"),
    [("lenet300", 0, 1.05), ("lenet300", 2, 1.3), pytest.param("lenet5", 0, 1.05, marks=pytest.mark.slow)],
)
def test_size_bound_holds_and_is_tight_on_real_packed_files(task: str, finetune_steps: int, tight: float) -> None:
    """Random joint policies on a real model: the bound is never below the file.

    Without channel pruning it is within ``tight``: exact payloads plus the header allowance (with a
    per-candidate fine-tune only the index is exact; codes count fixed-width, which Huffman coding
    beats). With channel pruning it is within 50% (a sliced layer's index is bounded for the worst case).
    """
    from envs.device import DeviceProfile
    from envs.evaluator import Evaluator, EvaluatorSettings
    from envs.tasks import load_task
    from methods.discovery import discover_layers, total_macs
    from methods.finetune import FinetuneSettings
    from search.searchers.rl.calibration import calibrate

    evaluator = Evaluator(load_task(task), DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3),
                          EvaluatorSettings(finetune=FinetuneSettings(steps=finetune_steps)))
    settings = SpaceSettings(sparsity_step=0.1, quantizers=("linear", "kmeans"))
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings, tuple(evaluator.layers))
    grid = ActionGrid.from_space(space, "joint")
    leaders = [name in space.leaders for name in space.layers]
    most = [grid.choice(np.ones(len(grid.dims)), leader) for leader in leaders]
    model = calibrate(evaluator, [Policy.from_choices(dict(zip(space.layers, most, strict=True)))],
                      keeps=grid.keeps[::3], latency_margin=None)
    rng = np.random.default_rng(0)
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for i in range(12):
        levels = rng.uniform(0, 1, size=(len(leaders), len(grid.dims))) ** (0.3 if i % 4 < 2 else 1.0)  # sparse
        pruned = i % 2 == 1
        levels[:, grid.dims.index("keep")] *= pruned
        choices = [grid.choice(lv, leader) for lv, leader in zip(levels, leaders, strict=True)]
        compressed = evaluator.compress(Policy.from_choices(dict(zip(space.layers, choices, strict=True))))
        costs = model.costs(choices)
        assert compressed.size_bytes <= costs.size_bytes
        assert costs.macs == total_macs(discover_layers(compressed.model, evaluator.task.input_shape))
        ratios[pruned].append(costs.size_bytes / compressed.size_bytes)
    assert max(ratios[False]) < tight and max(ratios[True]) < 1.5, ratios
