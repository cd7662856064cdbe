"""Final fine-tune, measurement on the test split and export of the Pareto front."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.budget import Budget
from core.policy import Policy
from envs.evaluator import Evaluator
from methods.finetune import FinetuneSettings
from methods.packing import write_packed
from search.archive import Trial
from search.pareto import non_dominated, spread_subset

PARETO_COLUMNS = [
    "rank",
    "model_file",
    "test_accuracy",
    "val_accuracy",
    "search_val_accuracy",
    "size_bytes",
    "latency_ms",
    "predicted_latency_ms",
    "macs",
    "params",
    "compression_ratio",
    "trial",
    "policy_digest",
    "policy",
]
MODEL_SUFFIX = ".acz"


@dataclass(frozen=True)
class ExportSettings:
    """The final fine-tune and export of the Pareto candidates."""

    finetune_epochs: float = 2.0
    """Epochs of masked quantization-aware fine-tuning per exported model."""
    finetune_lr: float = 1e-4
    """Adam learning rate of that fine-tune."""
    max_models: int = 6
    """Most models exported (spread along the front, the most accurate always included)."""
    distill_alpha: float = 0.0
    """Weight of knowledge distillation from the original model in that fine-tune (0 = off)."""
    distill_temperature: float = 4.0
    """Temperature of the teacher's soft targets."""
    prune_rounds: int = 1
    """Iterative pruning in that fine-tune: prune-then-retrain rounds on a cubic sparsity schedule."""

    def __post_init__(self) -> None:
        if isinstance(self.prune_rounds, bool) or not isinstance(self.prune_rounds, int) or self.prune_rounds < 1:
            raise ValueError(f"prune_rounds must be a positive integer, got {self.prune_rounds!r}")
        if self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.max_models < 1:
            raise ValueError("finetune_epochs >= 0, finetune_lr > 0 and max_models >= 1 are required")
        if not 0.0 <= self.distill_alpha <= 1.0 or self.distill_temperature <= 0:
            raise ValueError("distill_alpha must be in [0, 1] and distill_temperature > 0")


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
    predicted_latency_ms: float | None
    """The device's latency model's prediction for it (``None`` when the search measured latency)."""
    macs: int
    """MACs per sample."""
    params: int
    """Parameters of the architecture."""
    compression_ratio: float
    """fp32 bytes of the original weights (params x 4) / packed bytes."""

    def row(self) -> dict[str, object]:
        """The pareto.csv row."""
        return {
            "rank": self.rank,
            "model_file": self.model_file,
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "search_val_accuracy": self.search_val_accuracy,
            "size_bytes": self.size_bytes,
            "latency_ms": round(self.latency_ms, 4),
            "predicted_latency_ms": "" if self.predicted_latency_ms is None else round(self.predicted_latency_ms, 4),
            "macs": self.macs,
            "params": self.params,
            "compression_ratio": round(self.compression_ratio, 3),
            "trial": self.trial,
            "policy_digest": self.policy.digest(),
            "policy": self.policy.to_json(),
        }


@dataclass(frozen=True)
class Dropped:
    """A front candidate that did not make it into pareto.csv, and why."""

    trial: int
    """Trial number."""
    reason: str
    """Why it was dropped."""


def finetune_steps(evaluator: Evaluator, epochs: float, batch_size: int = 64) -> int:
    """Optimizer steps for ``epochs`` passes over the training split."""
    return int(math.ceil(epochs * len(evaluator.task.train) / batch_size))


def candidates(trials: Sequence[Trial], max_models: int) -> list[Trial]:
    """The feasible non-dominated trials of the search, at most ``max_models`` spread along the front."""
    feasible = [t for t in trials if t.feasible]
    unique = {t.policy.digest(): t for t in reversed(feasible)}
    pool = sorted(unique.values(), key=lambda t: t.number)
    points = [(t.result.val_accuracy, float(t.result.size_bytes), t.result.latency_ms) for t in pool]
    return [pool[i] for i in spread_subset(non_dominated(points), points, max_models)]


def export_front(
    evaluator: Evaluator,
    chosen: Sequence[Trial],
    budget: Budget,
    run_dir: Path,
    *,
    settings: ExportSettings,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> tuple[list[ExportedModel], list[Dropped]]:
    """Fine-tunes, re-measures and writes the chosen candidates (see :func:`candidates`).

    Every exported model is measured again after its fine-tune: size from the file's bytes,
    latency by running it, accuracy on val (for selection) and test (reported only).
    Candidates over budget after that, or dominated on the new numbers, are dropped.
    """
    original_bytes = 4 * sum(spec.params for spec in evaluator.layers)
    refinement = evaluator.refinement(
        FinetuneSettings(
            steps=finetune_steps(evaluator, settings.finetune_epochs),
            lr=settings.finetune_lr,
            seed=seed,
            distill_alpha=settings.distill_alpha,
            distill_temperature=settings.distill_temperature,
            prune_rounds=settings.prune_rounds,
        )
    )
    measured = []
    dropped = []
    for trial in chosen:
        compressed = evaluator.compress(trial.policy, refinement)
        result = evaluator.measure(compressed, reuse_latency=False)
        if not budget.admits(result.size_bytes, result.latency_ms):
            dropped.append(Dropped(trial.number, f"over budget after re-measurement "
                                   f"({result.size_bytes} B, {result.latency_ms:.2f} ms)"))
            if on_step is not None:
                on_step()
            continue
        test_accuracy = evaluator.test_accuracy(compressed)
        predicted = evaluator.predicted_latency_ms(compressed.model)
        measured.append((trial, compressed, result, test_accuracy, predicted))
        if on_step is not None:
            on_step()
    points = [(r.val_accuracy, float(r.size_bytes), r.latency_ms) for _, _, r, _, _ in measured]
    front = set(non_dominated(points))
    models_dir = run_dir / "models"
    models_dir.mkdir(exist_ok=True)
    exported = []
    for index, (trial, compressed, result, test_accuracy, predicted) in enumerate(measured):
        if index not in front:
            dropped.append(Dropped(trial.number, "dominated after the final fine-tune"))
            continue
        name = f"models/trial{trial.number:04d}-{trial.policy.digest()[:8]}{MODEL_SUFFIX}"
        write_packed(run_dir / name, compressed.blob)
        exported.append((trial, name, result, test_accuracy, predicted))
    exported.sort(key=lambda item: (item[2].size_bytes, -item[2].val_accuracy))
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
            predicted_latency_ms=predicted,
            macs=result.macs,
            params=result.params,
            compression_ratio=original_bytes / result.size_bytes,
        )
        for rank, (trial, name, result, test_accuracy, predicted) in enumerate(exported)
    ], dropped


def write_pareto_csv(path: Path, models: Sequence[ExportedModel]) -> None:
    """Writes pareto.csv (through a temporary file, so a reader never sees half of it)."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, PARETO_COLUMNS)
        writer.writeheader()
        for model in models:
            writer.writerow(model.row())
    tmp.replace(path)
