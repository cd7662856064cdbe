"""Final fine-tune, measurement on the test split and export of the Pareto front."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from core.budget import Budget
from core.metric import ACCURACY, MetricSpec
from core.policy import Policy
from envs.evaluator import Evaluator, FinetuneKeys, check_exposed
from envs.timing import Latency
from methods.finetune import FinetuneSettings
from methods.learned import LearnedSettings, check_learned
from methods.onnx_runtime import OnnxConversionError, OnnxRuntimeModel, export_onnx
from methods.packing import write_packed
from methods.pipeline import CompressedModel, Refinement
from methods.streams import sample_count
from search.archive import Trial
from search.pareto import non_dominated, spread_subset

PARETO_COLUMNS = [
    "rank",
    "model_file",
    "onnx_file",
    "test_accuracy",
    "val_accuracy",
    "search_val_accuracy",
    "size_bytes",
    "latency_ms",
    "latency_spread_ms",
    "predicted_latency_ms",
    "runtime",
    "macs",
    "params",
    "compression_ratio",
    "trial",
    "policy_digest",
    "policy",
    "final_finetune",
]
MODEL_SUFFIX = ".acz"
logger = logging.getLogger(__name__)


FINAL_LR = 1e-3
"""Default learning rate of the final fine-tune: the screening's, so the search ranks candidates by the
fine-tune they will get (``benchmarks/final_finetune.py``: 1e-4 left heavily pruned ResNets 33 points lower)."""


@dataclass(frozen=True)
class ExportSettings:
    """The final fine-tune and export of the Pareto candidates."""

    FINETUNE_KEYS: ClassVar[FinetuneKeys] = (
        ("finetune_lr", "lr"),
        ("distill_alpha", "distill_alpha"),
        ("distill_temperature", "distill_temperature"),
        ("prune_rounds", "prune_rounds"),
        ("finetune_schedule", "lr_schedule"),
        ("rewind", "rewind"),
    )
    """config.yaml keys of :attr:`finetune`'s fields (the file keeps these flat keys)."""

    finetune_epochs: float = 2.0
    """Epochs of masked quantization-aware fine-tuning per exported model."""
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(lr=FINAL_LR))
    """That fine-tune: Adam ``lr`` (``finetune_lr``) on a ``constant`` or ``cosine`` schedule
    (``finetune_schedule``), distillation from the original model (``distill_alpha``,
    0 = off; ``distill_temperature``) and iterative pruning (``prune_rounds``: prune-then-retrain rounds on a
    cubic sparsity schedule; ``rewind``: ``lr`` or ``weights``, what each round restarts from). Its steps come from
    ``finetune_epochs`` and its seed from the run's."""
    max_models: int = 5
    """Most models exported (spread along the front, the most accurate always included)."""
    onnx: bool = False
    """Also write each exported model as an ONNX file (``models/*.onnx``): the int8 graph for an ONNX Runtime
    int8 model, else the fp32 graph with the pruned shapes and the stored (decoded) weights."""
    learned: str | None = None
    """A learned-sparsity method (``methods/learned/``: ``variational_dropout``, ``group_lasso``, ``l0_gates``, ...)
    whose penalised training every candidate, searched and exported, starts from (trained once, from the task's
    model, before the search): what it zeroes stays removed and each candidate's per-layer choices apply on top.
    ``None``: the task's weights as they are. A policy that names its own method (a recipe's) keeps it."""
    learned_epochs: float = 10.0
    """Epochs of that training."""
    learned_lr: float = 1e-3
    """Its Adam learning rate."""
    learned_strength: float = 1.0
    """Multiplier of the method's penalty (higher: more removed, lower accuracy)."""

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0 or self.max_models < 1:
            raise ValueError("finetune_epochs >= 0 and max_models >= 1 are required")
        check_exposed(self.finetune, self.FINETUNE_KEYS, "export")
        if self.learned is not None:
            check_learned(self.learned)
        self.learned_settings(0)  # checks the learned_* values

    def learned_settings(self, seed: int) -> LearnedSettings:
        """The learned method's training (``learned_*``), seeded with the run's ``seed``."""
        return LearnedSettings(epochs=self.learned_epochs, lr=self.learned_lr, strength=self.learned_strength,
                               seed=seed)

    def exported_policy(self, policy: Policy) -> Policy:
        """The policy a candidate is exported with: with :attr:`learned` unless it names a method of its own."""
        if self.learned is None or policy.learned is not None:
            return policy
        return replace(policy, learned=self.learned)

    def final_finetune(self, evaluator: Evaluator, seed: int) -> FinetuneSettings:
        """The fine-tune of every exported model: :attr:`finetune` for ``finetune_epochs``, seeded with ``seed``."""
        steps = finetune_steps(evaluator, self.finetune_epochs, self.finetune.batch_size)
        return replace(self.finetune, steps=steps, seed=seed)


@dataclass(frozen=True)
class ExportedModel:
    """One model of the final Pareto front, as written to pareto.csv."""

    rank: int
    """Position in pareto.csv, smallest file first."""
    model_file: str
    """Path of the packed file, relative to the run folder."""
    trial: int
    """Trial that proposed the policy."""
    policy: Policy
    """The per-layer choices."""
    search_val_accuracy: float
    """Validation accuracy measured during the search (before the final fine-tune)."""
    val_accuracy: float
    """Validation accuracy after the final fine-tune."""
    test_accuracy: float
    """Test accuracy of the exported file."""
    size_bytes: int
    """Bytes of the exported file."""
    latency_ms: float
    """Latency of the exported model, measured again on the device profile."""
    latency_spread_ms: float
    """Range of the round medians of that measurement (``envs/timing.py``)."""
    predicted_latency_ms: float | None
    """The device's latency model's prediction for it (``None`` when the search measured latency)."""
    macs: int
    """MACs per sample."""
    params: int
    """Parameters of the architecture."""
    compression_ratio: float
    """fp32 bytes of the original weights (params x 4) / packed bytes."""
    runtime: str = ""
    """Runtime the model was measured on (recorded in its file's header; see ``search.runnable_model``)."""
    onnx_file: str = ""
    """Path of its ONNX file relative to the run folder (with ``export.onnx``; empty otherwise)."""
    metric: MetricSpec = ACCURACY
    """The task's metric; the ``*_accuracy`` fields hold its higher-is-better scores (:class:`MetricSpec`)."""
    final_finetune: bool = True
    """Whether the file holds the model after the final fine-tune; ``False`` when the same policy without it
    scored higher on validation (see :func:`export_front`), or when there was none."""

    def row(self) -> dict[str, object]:
        """The pareto.csv row (metric values under the metric's own column names, see :func:`pareto_columns`)."""
        return {
            "rank": self.rank,
            "model_file": self.model_file,
            "onnx_file": self.onnx_file,
            self.metric.column("test"): self.metric.value(self.test_accuracy),
            self.metric.column("val"): self.metric.value(self.val_accuracy),
            self.metric.column("search_val"): self.metric.value(self.search_val_accuracy),
            "size_bytes": self.size_bytes,
            "latency_ms": round(self.latency_ms, 4),
            "latency_spread_ms": round(self.latency_spread_ms, 4),
            "predicted_latency_ms": "" if self.predicted_latency_ms is None else round(self.predicted_latency_ms, 4),
            "runtime": self.runtime,
            "macs": self.macs,
            "params": self.params,
            "compression_ratio": round(self.compression_ratio, 3),
            "trial": self.trial,
            "policy_digest": self.policy.digest(),
            "policy": self.policy.to_json(),
            "final_finetune": self.final_finetune,
        }


@dataclass(frozen=True)
class Dropped:
    """A front candidate that did not make it into pareto.csv, and why."""

    trial: int
    """Trial number."""
    reason: str
    """Why it was dropped."""


def finetune_steps(evaluator: Evaluator, epochs: float, batch_size: int = 64) -> int:
    """Optimizer steps for ``epochs`` passes over the training split (its length is known: task loading checks)."""
    return int(math.ceil(epochs * (sample_count(evaluator.task.train) or 0) / batch_size))


def _front(trials: Sequence[Trial]) -> tuple[list[Trial], list[tuple[float, float, float]], list[int]]:
    """The feasible trials (one per policy), their (accuracy, size, latency) points and the non-dominated indices."""
    feasible = [t for t in trials if t.feasible]
    unique = {t.policy.digest(): t for t in reversed(feasible)}
    pool = sorted(unique.values(), key=lambda t: t.number)
    points = [(t.result.val_accuracy, float(t.result.size_bytes), t.result.latency_ms) for t in pool]
    return pool, points, non_dominated(points)


def candidates(trials: Sequence[Trial], max_models: int) -> list[Trial]:
    """The feasible non-dominated trials of the search, at most ``max_models`` spread along the front."""
    pool, points, front = _front(trials)
    return [pool[i] for i in spread_subset(front, points, max_models)]


def reserves(trials: Sequence[Trial], chosen: Sequence[Trial]) -> list[Trial]:
    """The feasible non-dominated trials not in ``chosen``, most accurate first: the export takes the next of
    these in place of a chosen candidate it drops as over budget when re-measured."""
    pool, points, front = _front(trials)
    taken = {t.number for t in chosen}
    rest = [i for i in front if pool[i].number not in taken]
    return [pool[i] for i in sorted(rest, key=lambda i: (-points[i][0], points[i][2], points[i][1]))]


def export_front(
    evaluator: Evaluator,
    chosen: Sequence[Trial],
    budget: Budget,
    run_dir: Path,
    *,
    settings: ExportSettings,
    seed: int,
    on_step: Callable[[], None] | None = None,
    spares: Sequence[Trial] = (),
) -> tuple[list[ExportedModel], list[Dropped]]:
    """Fine-tunes, re-measures and writes the chosen candidates (see :func:`candidates`).

    The fine-tuned model is kept unless the same policy without the final fine-tune scores higher on
    validation (a light policy on a well-trained model can lose accuracy to the fine-tune's fresh learning
    rate); then that one is exported. Every exported model is measured again, on its policy's runtime: size
    from the file's bytes, latency by running it (in the timing process, and again in one started for it alone,
    as a user loading the file would; the slower figure counts), accuracy on val (for selection) and test
    (reported only). Candidates over budget after that, or dominated on the new numbers, are dropped; each one
    dropped as over budget is replaced by the next of ``spares`` (see :func:`reserves`), if any.
    """
    original_bytes = 4 * sum(spec.params for spec in evaluator.layers)
    refinement = evaluator.refinement(settings.final_finetune(evaluator, seed))
    measured = []
    dropped = []
    queue, spare = list(chosen), list(spares)
    while queue:
        trial = queue.pop(0)
        trial = replace(trial, policy=settings.exported_policy(trial.policy))
        compressed, finetuned = _kept_finetune(evaluator, trial.policy, refinement)
        fresh = evaluator.fresh_latency(compressed.model, trial.policy.runtime)
        result = evaluator.measure(compressed, reuse_latency=False)
        # the timing process's figure is the later one: the fresh one is scaled to the anchor it was made with
        fresh = evaluator.current(fresh, trial.policy.runtime)
        latency = Latency(result.latency_ms, result.latency_spread_ms, 0).worst(fresh)
        result = replace(result, latency_ms=latency.ms, latency_spread_ms=latency.spread_ms)
        if not budget.admits(result.size_bytes, result.latency_ms):
            dropped.append(Dropped(trial.number, f"over budget after re-measurement "
                                   f"({result.size_bytes} B, {result.latency_ms:.2f} ms)"))
            if spare:
                queue.append(spare.pop(0))
            if on_step is not None:
                on_step()
            continue
        test_accuracy = evaluator.test_accuracy(compressed)
        predicted = evaluator.predicted_latency_ms(compressed.model, result.runtime)
        measured.append((trial, compressed, result, test_accuracy, predicted, finetuned))
        if on_step is not None:
            on_step()
    points = [(r.val_accuracy, float(r.size_bytes), r.latency_ms) for _, _, r, _, _, _ in measured]
    front = set(non_dominated(points))
    models_dir = run_dir / "models"
    models_dir.mkdir(exist_ok=True)
    exported = []
    for index, (trial, compressed, result, test_accuracy, predicted, finetuned) in enumerate(measured):
        if index not in front:
            dropped.append(Dropped(trial.number, "dominated after the final fine-tune"))
            continue
        name = f"models/trial{trial.number:04d}-{trial.policy.digest()[:8]}{MODEL_SUFFIX}"
        write_packed(run_dir / name, compressed.blob)
        onnx_name = ""
        if settings.onnx:
            try:
                graph = onnx_bytes(evaluator, compressed)
            except OnnxConversionError as exc:
                logger.warning("no ONNX file for trial %d: %s", trial.number, exc)
            else:
                onnx_name = name.removesuffix(MODEL_SUFFIX) + ".onnx"
                write_packed(run_dir / onnx_name, graph)
        exported.append((trial, name, onnx_name, result, test_accuracy, predicted, finetuned))
    exported.sort(key=lambda item: (item[3].size_bytes, -item[3].val_accuracy))
    return [
        ExportedModel(
            rank=rank,
            model_file=name,
            trial=trial.number,
            policy=trial.policy,
            search_val_accuracy=trial.result.val_accuracy,
            val_accuracy=result.val_accuracy,
            test_accuracy=test_accuracy,
            size_bytes=result.size_bytes,
            latency_ms=result.latency_ms,
            latency_spread_ms=result.latency_spread_ms,
            predicted_latency_ms=predicted,
            macs=result.macs,
            params=result.params,
            compression_ratio=original_bytes / result.size_bytes,
            runtime=result.runtime,
            onnx_file=onnx_name,
            metric=evaluator.task.metric_spec,
            final_finetune=finetuned,
        )
        for rank, (trial, name, onnx_name, result, test_accuracy, predicted, finetuned) in enumerate(exported)
    ], dropped


def _kept_finetune(evaluator: Evaluator, policy: Policy, refinement: Refinement) -> tuple[CompressedModel, bool]:
    """``policy``'s model after the final fine-tune of ``refinement``, or without it (BatchNorm recalibration
    only) when that one scores higher on validation; and whether the fine-tuned one was kept."""
    tuned = evaluator.compress(policy, refinement)
    if refinement.finetune.steps == 0:
        return tuned, False
    plain = evaluator.compress(policy, evaluator.refinement())
    if evaluator.val_score(plain) > evaluator.val_score(tuned):
        return plain, False
    return tuned, True


def onnx_bytes(evaluator: Evaluator, compressed: CompressedModel) -> bytes:
    """The exported model as an ONNX file: the graph its ONNX Runtime runs, else the fp32 graph of the model."""
    runnable = evaluator.runnable(compressed.model, evaluator.runtime_of(compressed))
    if isinstance(runnable, OnnxRuntimeModel):
        return runnable.onnx_bytes
    return export_onnx(compressed.model, evaluator.task.input_shape)


def write_pareto_csv(path: Path, models: Sequence[ExportedModel], metric: MetricSpec = ACCURACY) -> None:
    """Writes pareto.csv (through a temporary file, so a reader never sees half of it); columns named after the
    models' metric (``metric`` when there is no model)."""
    metric = models[0].metric if models else metric
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, metric.columns(PARETO_COLUMNS))
        writer.writeheader()
        for model in models:
            writer.writerow(model.row())
    tmp.replace(path)
