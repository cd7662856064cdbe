"""Latency filling: proposals are widened or narrowed together to just under the latency target."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.budget import Budget
from core.errors import UsageError
from core.policy import LayerChoice, Policy
from core.space import SearchSpace, SpaceSettings
from envs.device import DeviceProfile, load_device
from envs.evaluator import Evaluator, EvaluatorSettings
from envs.tasks import load_task
from methods.pipeline import architecture
from search import run_search
from search.latency_fill import LatencyFill, latency_fill

LEADERS = ("a", "b", "c")
SPACE = SearchSpace(("a", "b", "c", "d"), LEADERS, SpaceSettings(keep_min=0.125, keep_step=0.125, latency_fill=0.9))
FAST = DeviceProfile(name="test-fill", threads=1, batch=4, warmup=0, repeats=2)


def _summed_keeps(target_ms: float) -> LatencyFill:
    """A filler whose 'latency' is the sum of the leaders' keep ratios (monotone, exact)."""
    return LatencyFill(
        SPACE, target_ms, 0.9,
        latency_of=lambda policy: sum(policy[name].keep for name in LEADERS),  # type: ignore[attr-defined]
        architecture_of=lambda policy: policy,  # type: ignore[arg-type,return-value]
    )


PROPOSAL = Policy.from_choices({
    "a": LayerChoice(sparsity=0.5, bits=4, keep=0.25),
    "b": LayerChoice(keep=0.5),
    "c": LayerChoice(keep=1.0),
    "d": LayerChoice(sparsity=0.3, bits=6),
})


def test_fill_scales_keeps_together_to_just_under_the_aim() -> None:
    filled = _summed_keeps(2.0)(PROPOSAL)
    keeps = [filled[name].keep for name in LEADERS]
    assert sum(keeps) <= 0.9 * 2.0
    assert sum(keeps) > 0.9 * 2.0 - len(LEADERS) * 0.125  # at most one grid step short per group
    assert keeps == sorted(keeps) and keeps[0] < keeps[2]  # the width profile keeps its shape
    assert all(k in {i * 0.125 for i in range(1, 9)} for k in keeps)
    assert filled["d"] == PROPOSAL["d"]
    assert (filled["a"].sparsity, filled["a"].bits) == (0.5, 4)
    widened = _summed_keeps(3.0)(PROPOSAL)  # room to spare: wider than proposed
    assert all(widened[n].keep >= PROPOSAL[n].keep for n in LEADERS) and widened["a"].keep > 0.25


def test_fill_saturates_at_the_ends_of_the_grid() -> None:
    assert [_summed_keeps(100.0)(PROPOSAL)[n].keep for n in LEADERS] == [1.0, 1.0, 1.0]
    assert [_summed_keeps(0.01)(PROPOSAL)[n].keep for n in LEADERS] == [0.125, 0.125, 0.125]


def test_fill_is_off_without_a_fraction_a_target_or_keep_ratios() -> None:
    evaluator = Evaluator(load_task("lenet300"), FAST)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(latency_fill=0.9))
    assert latency_fill(evaluator, space, Budget(latency_ms=1.0)) is not None
    assert latency_fill(evaluator, space, Budget(size_bytes=1000)) is None
    off = SearchSpace(space.layers, space.leaders, SpaceSettings())
    assert latency_fill(evaluator, off, Budget(latency_ms=1.0)) is None
    no_keep = SearchSpace(space.layers, space.leaders, SpaceSettings(latency_fill=0.9, channel_pruning=False))
    assert latency_fill(evaluator, no_keep, Budget(latency_ms=1.0)) is None
    with pytest.raises(ValueError, match="latency_fill"):
        SpaceSettings(latency_fill=1.5)


def test_fill_with_the_device_latency_model_verifies_on_the_device(tmp_path: Path) -> None:
    device = DeviceProfile(name="test-fill-steady", threads=1, batch=32, warmup=2, repeats=10)
    evaluator = Evaluator(load_task("lenet300"), device, EvaluatorSettings(latency="predicted"))
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(latency_fill=0.95))
    task = evaluator.task
    full = evaluator.predictor(architecture(task.model, Policy(), task.input_shape))
    filler = LatencyFill.for_evaluator(evaluator, space, full, 0.95)
    filled = filler(_uniform(evaluator, 0.25))
    assert all(filled[name].keep > 0.25 for name in evaluator.leaders)  # widened into the unused budget
    assert 1 <= len(evaluator.latency_checks) <= 3 and len(filler.ratios) == len(evaluator.latency_checks)
    measured = evaluator.latency_checks[-1].measured_ms
    model = evaluator.compress(filled).model
    assert evaluator.latency_ms(model) == measured  # the candidate's latency is the real run, not the model's


def _uniform(evaluator: Evaluator, keep: float) -> Policy:
    return Policy.from_choices({name: LayerChoice(keep=keep) for name in evaluator.leaders})


def test_search_evaluates_filled_policies_and_ray_refuses_the_option(tmp_path: Path) -> None:
    evaluator = Evaluator(load_task("lenet300"), load_device("cpu-b32"), EvaluatorSettings(latency="predicted"))
    target = 0.75 * evaluator.predictor(evaluator.task.model)  # the run's device and latency table
    outcome = run_search(
        task="lenet300", searcher="random", trials=3, target_latency=f"{target}ms", out=tmp_path / "run",
        space={"bits": [32], "sparsity_max": 0.0, "latency_fill": 0.9}, evaluator={"latency": "predicted"},
        export={"finetune_epochs": 0.0, "max_models": 1},
    )
    measured = {check.measured_ms for check in outcome.latency_checks}
    assert len(outcome.trials) == 3 and all(t.result.latency_ms in measured for t in outcome.trials)
    with pytest.raises(UsageError, match="latency_fill"):
        run_search(task="lenet300", searcher="ray", trials=1, target_latency="1ms", out=tmp_path / "ray",
                   space={"latency_fill": 0.9})
    assert not (tmp_path / "ray").exists()


def test_only_searchers_without_their_own_budget_wall_are_filled() -> None:
    from search.searchers import SEARCHERS

    assert SEARCHERS["rl"].bounds_latency  # AMC's wall already clamps each action to the budget
    assert not any(SEARCHERS[name].bounds_latency for name in ("tpe", "nsga2", "random"))


def test_filled_widths_are_verified_by_real_runs_and_the_aim_is_corrected() -> None:
    runs: list[tuple[float, float]] = []

    def summed(policy) -> float:  # noqa: ANN001 - the stand-in architecture is the policy itself
        return sum(policy[name].keep for name in LEADERS)

    filler = LatencyFill(
        SPACE, 2.0, 0.9, latency_of=summed, architecture_of=lambda policy: policy,  # type: ignore[arg-type,return-value]
        measure_of=lambda policy: 1.25 * summed(policy),  # the model under-predicts by a fifth
        on_measured=lambda model, predicted, measured: runs.append((predicted, measured)),
    )
    first = filler(PROPOSAL)
    assert 1.25 * summed(first) <= 0.9 * 2.0 and len(runs) >= 2  # narrowed after a run over the aim
    assert filler.correction == pytest.approx(1.25)
    runs.clear()
    second = filler(PROPOSAL)
    assert len(runs) == 1 and runs[0][1] <= 0.9 * 2.0  # the corrected aim is right the first time
    assert 1.25 * summed(second) > 0.9 * 2.0 - len(LEADERS) * 0.125 * 1.25


def test_each_runtime_fills_with_its_own_latency_and_the_runtime_is_kept() -> None:
    from search.latency_fill import RuntimeFills

    class _Device:
        def device_for(self, runtime: str | None) -> DeviceProfile:
            return DeviceProfile(name="x", runtime=runtime or "torch")

    made: list[str] = []

    def filler(runtime: str) -> LatencyFill:
        """'Latency' is the sum of the leaders' keep ratios, halved on int8."""
        made.append(runtime)
        scale = 1.0 if runtime == "torch" else 0.5
        return LatencyFill(
            SPACE, 2.0, 0.9, latency_of=lambda policy: scale * sum(policy[n].keep for n in LEADERS),  # type: ignore
            architecture_of=lambda policy: policy,  # type: ignore[arg-type,return-value]
        )

    fills = RuntimeFills(_Device(), filler)  # type: ignore[arg-type]
    fp32 = fills(PROPOSAL)
    int8 = fills(dataclasses.replace(PROPOSAL, runtime="torch-int8"))
    assert fills(dataclasses.replace(PROPOSAL, runtime="torch")).layers == fp32.layers  # None: the default
    assert made == ["torch", "torch-int8"]
    assert int8.runtime == "torch-int8" and fp32.runtime is None
    assert sum(int8[n].keep for n in LEADERS) > sum(fp32[n].keep for n in LEADERS)  # the faster runtime is wider
