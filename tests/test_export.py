"""Export: every model is re-timed in a process started for it alone, and the slower figure decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from core.budget import Budget
from core.policy import LayerChoice, Policy
from core.result import Result
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from envs.timing import MIN_ROUNDS, Latency
from search.archive import Trial
from search.export import ExportSettings, candidates, export_front, reserves, write_pareto_csv

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)
POLICY = Policy.from_choices({"fc1": LayerChoice(0.5, 4), "fc2": LayerChoice(0.5, 4)})


class _ScriptedTiming(Evaluator):
    """Device timings from a script: the timing process says ``warm`` ms, a fresh process ``fresh`` ms."""

    def __init__(self, *args: object, warm: float, fresh: float, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.warm, self.fresh, self.fresh_calls = warm, fresh, 0

    def measure_model(self, model: nn.Module, runnable: nn.Module | None = None,
                      runtime: str | None = None) -> Latency:
        return Latency(self.warm, 0.1, 3)

    def fresh_latency(self, model: nn.Module, runtime: str | None = None) -> Latency:
        self.fresh_calls += 1
        return Latency(self.fresh, 0.2, 3)


def _export(evaluator: Evaluator, budget: Budget, tmp_path: Path, policy: Policy = POLICY,
            settings: ExportSettings = ExportSettings(finetune_epochs=0)) -> tuple[list, list]:
    trial = Trial(0, "random", policy, Result(val_accuracy=0.9, size_bytes=1, latency_ms=1.0), True)
    tmp_path.mkdir(exist_ok=True)
    return export_front(evaluator, [trial], budget, tmp_path, settings=settings, seed=0)


@pytest.mark.parametrize(("fresh", "kept"), [(9.0, True), (10.5, False)])
def test_the_slower_of_the_timing_process_and_a_fresh_one_decides(tmp_path: Path, fresh: float, kept: bool) -> None:
    evaluator = _ScriptedTiming(load_task("lenet300"), FAST, warm=9.5, fresh=fresh)
    models, dropped = _export(evaluator, Budget(latency_ms=10.0), tmp_path)
    assert evaluator.fresh_calls == 1
    if kept:
        assert [(m.latency_ms, m.latency_spread_ms) for m in models] == [(9.5, 0.2)]
        assert (tmp_path / models[0].model_file).is_file()
    else:
        assert not models and "over budget" in dropped[0].reason and "10.50 ms" in dropped[0].reason


def test_a_fresh_timing_process_is_started_and_ended_for_each_call() -> None:
    evaluator = Evaluator(load_task("lenet300"), FAST)
    model = load_task("lenet300").model
    first = evaluator.fresh_latency(model)
    assert first.ms > 0 and first.rounds >= MIN_ROUNDS
    assert evaluator._timing_worker is None  # the long-lived timing process is neither used nor started


class _FreshSequence(_ScriptedTiming):
    """A fresh process that times each successive model at the next of ``fresh_ms``."""

    def __init__(self, *args: object, fresh_ms: list[float], **kwargs: object):
        super().__init__(*args, warm=9.0, fresh=0.0, **kwargs)
        self.fresh_ms = list(fresh_ms)

    def fresh_latency(self, model: nn.Module, runtime: str | None = None) -> Latency:
        self.fresh_calls += 1
        return Latency(self.fresh_ms.pop(0), 0.2, 3)


def test_a_chosen_candidate_dropped_as_over_budget_is_replaced_by_the_most_accurate_spare(tmp_path: Path) -> None:
    sparser = Policy.from_choices({"fc1": LayerChoice(0.6, 4), "fc2": LayerChoice(0.6, 4)})
    trials = [Trial(0, "random", POLICY, Result(val_accuracy=0.9, size_bytes=10, latency_ms=2.0), True),
              Trial(1, "random", sparser, Result(val_accuracy=0.8, size_bytes=5, latency_ms=1.0), True),
              Trial(2, "random", POLICY, Result(val_accuracy=0.95, size_bytes=1, latency_ms=1.0), False)]
    chosen = candidates(trials, max_models=1)
    assert [t.number for t in chosen] == [0] and [t.number for t in reserves(trials, chosen)] == [1]
    evaluator = _FreshSequence(load_task("lenet300"), FAST, fresh_ms=[10.5, 9.0])
    models, dropped = export_front(evaluator, chosen, Budget(latency_ms=10.0), tmp_path,
                                   settings=ExportSettings(finetune_epochs=0), seed=0,
                                   spares=reserves(trials, chosen))
    assert [m.trial for m in models] == [1] and [d.trial for d in dropped] == [0]
    assert evaluator.fresh_calls == 2


@pytest.mark.parametrize("runtime", [None, "onnxruntime-int8"])
def test_export_writes_an_onnx_file_that_onnx_runtime_runs_with_the_reported_accuracy(
    tmp_path: Path, runtime: str | None
) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    device = DeviceProfile(name="test-onnx", runtimes=("torch", "onnxruntime-int8"), threads=1, batch=8, warmup=1,
                           repeats=3)
    task = load_task("lenet300")
    evaluator = Evaluator(task, device)
    policy = Policy.from_choices({"fc1": LayerChoice(0.5, 4), "fc2": LayerChoice(0.5, 4)}, runtime=runtime)
    trial = Trial(0, "random", policy, Result(val_accuracy=0.9, size_bytes=1, latency_ms=1.0), True)
    try:
        (model,), _ = export_front(evaluator, [trial], Budget(), tmp_path,
                                   settings=ExportSettings(finetune_epochs=0, onnx=True), seed=0)
    finally:
        evaluator.close()
    path = tmp_path / model.onnx_file
    assert model.onnx_file.endswith(".onnx") and path.is_file()
    graph = onnx.load(path).graph
    quantized = any("Quant" in node.op_type or "Integer" in node.op_type for node in graph.node)
    assert quantized == (runtime == "onnxruntime-int8")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, labels = task.test.tensors
    logits = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    accuracy = float((np.argmax(logits, axis=1) == labels.numpy()).mean())
    assert abs(accuracy - model.test_accuracy) <= 0.002


@pytest.mark.slow
def test_the_final_fine_tune_is_kept_only_where_it_raises_the_validation_score(tmp_path: Path) -> None:
    """A fine-tune that harms (here: far too high a learning rate on the uncompressed model) is left out, and the
    file holds the model as it was; one that recovers a heavily compressed model is kept."""
    from methods.finetune import FinetuneSettings

    evaluator = _ScriptedTiming(load_task("lenet300"), FAST, warm=1.0, fresh=1.0)
    original = evaluator.score(evaluator.task.model, evaluator.val_data)
    fp32 = Policy.from_choices({name: LayerChoice(bits=32) for name in evaluator.layer_names})
    harmful = ExportSettings(finetune_epochs=1, finetune=FinetuneSettings(lr=5e-2))
    (plain,), _ = _export(evaluator, Budget(), tmp_path / "fp32", fp32, harmful)
    assert not plain.final_finetune and plain.val_accuracy == pytest.approx(original, abs=1e-9)
    write_pareto_csv(tmp_path / "pareto.csv", [plain])
    assert (tmp_path / "pareto.csv").read_text().splitlines()[1].endswith(",False")

    heavy = Policy.from_choices({name: LayerChoice(0.95, 2) for name in evaluator.layer_names})
    (untuned,), _ = _export(evaluator, Budget(), tmp_path / "untuned", heavy)
    (tuned,), _ = _export(evaluator, Budget(), tmp_path / "tuned", heavy, ExportSettings(finetune_epochs=1))
    assert not untuned.final_finetune
    assert tuned.final_finetune and tuned.val_accuracy > untuned.val_accuracy
