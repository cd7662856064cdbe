"""The evaluator on a real built-in task: caching, failures, measurements."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST)


def test_layers_and_groups(evaluator: Evaluator) -> None:
    assert evaluator.layer_names == ["fc1", "fc2", "fc3"]
    assert evaluator.leaders == ["fc1", "fc2"]


def test_measurements_and_cache(evaluator: Evaluator) -> None:
    policy = Policy.from_choices({"fc1": LayerChoice(0.9, 4), "fc2": LayerChoice(0.5, 6, keep=0.5)})
    first = evaluator.evaluate(policy)
    assert first.ok and 0.8 < first.val_accuracy <= 1.0
    assert first.size_bytes == len(evaluator.compress(policy).blob)
    assert first.latency_ms > 0 and first.seconds > 0
    assert first.params < 266_610 and first.macs < 266_200
    assert evaluator.evaluate(policy) is first
    dense = evaluator.evaluate(Policy())
    assert dense.size_bytes > 4 * 266_610 and first.size_bytes < dense.size_bytes / 10


def test_a_candidate_that_raises_is_recorded_as_failed(evaluator: Evaluator) -> None:
    broken = Policy.from_choices({"no.such.layer": LayerChoice(0.5, 4)})
    seen: list[Exception] = []
    result = evaluator.evaluate(broken, on_error=seen.append)
    assert not result.ok and "ValueError" in result.error and "no.such.layer" in result.error and seen
    assert evaluator.evaluate(Policy.from_choices({"fc1": LayerChoice(0.5, 8)})).ok


def test_predicted_latency_mode_uses_the_table_and_checks_it(evaluator: Evaluator) -> None:
    from envs.evaluator import EvaluatorSettings

    predicting = Evaluator(evaluator.task, FAST, EvaluatorSettings(latency="predicted", latency_check_every=2))
    policies = [Policy.from_choices({"fc1": LayerChoice(keep=k)}) for k in (0.5, 0.75, 0.25)]
    results = [predicting.evaluate(p) for p in policies]
    models = [predicting.compress(p).model for p in policies]
    assert [r.latency_ms for r in results] == [predicting.predictor(m) for m in models]
    assert len(predicting.latency_checks) == 2  # the 1st and 3rd new architectures were also run
    assert all(c.measured_ms > 0 and c.predicted_ms > 0 for c in predicting.latency_checks)
    assert predicting.predicted_latency_ms(models[0]) == results[0].latency_ms
    assert evaluator.predicted_latency_ms(models[0]) is None
    with pytest.raises(ValueError, match="latency"):
        EvaluatorSettings(latency="guessed")


def test_architecture_key_ignores_parameter_registration_order() -> None:
    from torch import nn

    from envs.evaluator import _architecture_key

    first = nn.Sequential(nn.Linear(4, 3))
    second = nn.Sequential(nn.Linear(4, 3))
    weight, bias = second[0].weight, second[0].bias
    del second[0].weight, second[0].bias
    second[0].register_parameter("bias", bias)  # a decoded model may register them in this order
    second[0].register_parameter("weight", weight)
    assert [tuple(p.shape) for p in first.parameters()] != [tuple(p.shape) for p in second.parameters()]
    assert _architecture_key(first) == _architecture_key(second)
    assert _architecture_key(first) != _architecture_key(nn.Sequential(nn.Linear(4, 2)))


def test_every_nth_candidate_is_decoded_in_full_and_a_mismatch_fails_it(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search measures the state built from the encoder's codes; every n-th candidate also decodes the bytes,
    and bytes that decode to anything else (here a decoder that shifts one weight) fail that candidate."""
    import torch

    import methods.packing as packing
    from envs.evaluator import EvaluatorSettings

    real_unpack = packing.unpack

    def off_by_one_unpack(blob: bytes):  # noqa: ANN202 - the signature of unpack
        meta, state = real_unpack(blob)
        state["fc1.weight"].view(-1)[0] = torch.nextafter(state["fc1.weight"].view(-1)[0], torch.tensor(1.0))
        return meta, state

    monkeypatch.setattr(packing, "unpack", off_by_one_unpack)
    checking = Evaluator(evaluator.task, FAST, EvaluatorSettings(decode_check_every=2))
    policies = [Policy.from_choices({"fc1": LayerChoice(s, 4)}) for s in (0.5, 0.6, 0.7, 0.8)]
    results = [checking.evaluate(p) for p in policies]
    assert [r.ok for r in results] == [False, True, False, True]
    assert "fc1.weight" in results[0].error and "does not decode" in results[0].error
    with pytest.raises(packing.PackFormatError, match="fc1.weight"):
        checking.compress(policies[1])  # outside the search loop every compression is checked
    monkeypatch.setattr(packing, "unpack", real_unpack)
    assert checking.compress(policies[1]).blob == evaluator.compress(policies[1]).blob
    with pytest.raises(ValueError, match="decode_check_every"):
        EvaluatorSettings(decode_check_every=0)


class _ScriptedTiming(Evaluator):
    """An evaluator whose device timings come from a script (a shared machine's noise is not reproducible)."""

    def __init__(self, *args, timings: list, **kwargs):  # noqa: ANN002, ANN003 - Evaluator's arguments
        super().__init__(*args, **kwargs)
        self.timings = list(timings)

    def measure_model(self, model, runnable=None, runtime=None):  # noqa: ANN001, ANN201 - Evaluator's signature
        return self.timings.pop(0)


@pytest.mark.parametrize(
    ("target", "timings", "expected"),
    [
        (10.0, [(9.5, 1.0), (10.4, 0.5)], (10.4, 1.0)),  # near the target: timed again, the slower run kept
        (10.0, [(9.5, 1.0), (9.2, 0.3)], (9.5, 1.0)),  # confirmed within target
        (10.0, [(8.0, 1.0)], (8.0, 1.0)),  # clear of the target: one measurement
        (None, [(9.5, 1.0)], (9.5, 1.0)),  # no target: nothing to confirm
    ],
)
def test_a_latency_near_the_target_is_measured_again(
    evaluator: Evaluator, target: float | None, timings: list, expected: tuple[float, float]
) -> None:
    from envs.timing import Latency

    scripted = _ScriptedTiming(evaluator.task, FAST, timings=[Latency(ms, spread, 3) for ms, spread in timings])
    scripted.latency_target_ms = target
    result = scripted.evaluate(Policy.from_choices({"fc1": LayerChoice(0.5, 4)}))
    assert (result.latency_ms, result.latency_spread_ms) == expected
    assert not scripted.timings  # every scripted measurement, and no other, was taken


MULTI = DeviceProfile(name="test-multi", runtimes=("torch", "torch-int8"), threads=1, batch=8, warmup=1, repeats=3)
"""FAST's settings with a second runtime allowed."""


def test_a_candidate_is_converted_timed_and_evaluated_on_its_policy_runtime(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envs.tasks import evaluate_accuracy
    from envs.timing import Latency
    from envs.timing_worker import TimingWorker

    sent: list[DeviceProfile] = []

    def scripted(self, model, input_shape, device):  # noqa: ANN001, ANN202 - TimingWorker.measure's signature
        sent.append(device)
        return Latency(2.0 if device.int8 else 5.0, 0.1, 3)

    monkeypatch.setattr(TimingWorker, "measure", scripted)
    multi = Evaluator(evaluator.task, MULTI, replace(evaluator.settings, paired_timing=False))
    choices = {"fc1": LayerChoice(0.5, 8), "fc2": LayerChoice(keep=0.5)}
    fp32, int8 = Policy.from_choices(choices), Policy.from_choices(choices, runtime="torch-int8")
    on_fp32, on_int8 = multi.evaluate(fp32), multi.evaluate(int8)
    # One architecture, two runtimes: the latency cache does not hand the fp32 figure to the int8 candidate.
    assert (on_fp32.runtime, on_fp32.latency_ms) == ("torch", 5.0)
    assert (on_int8.runtime, on_int8.latency_ms) == ("torch-int8", 2.0)
    assert [d.runtime for d in sent] == ["torch", "torch-int8"]  # the timing worker gets the candidate's profile
    assert (sent[1].threads, sent[1].batch, sent[1].repeats) == (MULTI.threads, MULTI.batch, MULTI.repeats)
    assert multi.evaluate(Policy.from_choices(choices, runtime="torch")).latency_ms == 5.0 and len(sent) == 2
    compressed = multi.compress(int8)
    assert compressed.meta["runtime"] == "torch-int8" and multi.compress(fp32).meta["runtime"] == "torch"
    runnable = multi.runnable(compressed.model, "torch-int8")
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in runnable.modules())
    assert on_int8.val_accuracy == evaluate_accuracy(runnable, multi.task.val)  # the int8 model's accuracy
    assert on_fp32.val_accuracy == evaluate_accuracy(multi.compress(fp32).model, multi.task.val)
    refused = multi.evaluate(Policy.from_choices(choices, runtime="onnxruntime"))
    assert not refused.ok and "runtime 'onnxruntime' is not allowed on device 'test-multi'" in refused.error


def test_predicted_latency_uses_one_latency_model_per_runtime(evaluator: Evaluator) -> None:
    from envs.evaluator import EvaluatorSettings

    predicting = Evaluator(evaluator.task, MULTI, EvaluatorSettings(latency="predicted", latency_check_every=100))
    default, int8 = predicting.predictor, predicting.predictor_for("torch-int8")
    assert default is predicting.predictor_for("torch") and int8 is predicting.predictor_for("torch-int8")
    assert (default.table.precision, int8.table.precision) == ("fp32", "int8")
    assert default.table.path != int8.table.path
    policy = Policy.from_choices({"fc1": LayerChoice(keep=0.5)}, runtime="torch-int8")
    result = predicting.evaluate(policy)
    model = predicting.compress(policy).model
    assert result.latency_ms == int8(model) == predicting.predicted_latency_ms(model, "torch-int8")
    assert result.latency_ms != default(model)


def test_every_figure_is_paired_with_the_reference_and_scaled_by_the_runs_one_anchor(evaluator: Evaluator) -> None:
    from envs.timing import MAX_ROUNDS, Paired

    paired = Evaluator(evaluator.task, FAST)
    reference = paired.reference
    assert [m.out_features for m in reference.modules() if isinstance(m, torch.nn.Linear)][:2] == [75, 25]
    model = paired.compress(Policy.from_choices({"fc1": LayerChoice(keep=0.5)})).model
    first = paired.measure_model(model)
    anchor = paired.anchors["torch"]
    assert first.anchor_ms == anchor > 0 and first.rounds >= 3
    fresh = paired.fresh_latency(model)  # a new process, the same reference and anchor
    assert fresh.anchor_ms == paired.anchors["torch"] <= anchor
    # a faster reference round lowers the anchor, and figures cached before are scaled to it
    cached = paired.latency(model)
    lowered = Paired(rounds=(1.0,), reference=(0.5 * anchor, 0.5 * anchor))
    paired._anchored(lowered, FAST)
    assert paired.anchors["torch"] == 0.5 * anchor
    assert paired.latency(model).ms == pytest.approx(cached.ms * 0.5 * anchor / cached.anchor_ms)
    assert paired._anchor_rounds(FAST) == 0 and paired._anchor_rounds(FAST.on("torch-int8")) == MAX_ROUNDS
    paired.close()
