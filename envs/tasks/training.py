"""Deterministic CPU training of a task's model and its evaluation under the task's metric."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.errors import UsageError
from methods.objective import METRICS, Metric, task_loss
from methods.streams import EVAL_BATCH, Data, Stream, epoch_batches, sample_count

SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""Learning-rate schedules understood by ``train_model``."""


@dataclass
class TrainRecipe:
    """How to train a model from scratch: Adam + cross-entropy on shuffled mini-batches."""

    epochs: int
    """Passes over the training split (>= 1)."""
    lr: float
    """Adam learning rate (> 0)."""
    batch_size: int
    """Samples per optimiser step (>= 1)."""
    weight_decay: float = 0.0
    """Adam L2 weight decay (>= 0)."""
    seed: int = 0
    """Seed of the weight initialisation and of the shuffling order (>= 0)."""
    schedule: str = "constant"
    """Learning-rate schedule over the optimiser steps: ``constant`` or ``cosine`` (to 0)."""

    def __post_init__(self) -> None:
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"TrainRecipe.epochs must be an int >= 1, got {self.epochs!r}")
        if not _is_number(self.lr) or not self.lr > 0:
            raise ValueError(f"TrainRecipe.lr must be a finite number > 0, got {self.lr!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"TrainRecipe.batch_size must be an int >= 1, got {self.batch_size!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainRecipe.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"TrainRecipe.seed must be an int >= 0, got {self.seed!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainRecipe.schedule must be one of {SCHEDULES}, got {self.schedule!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _lr_factor(schedule: str, total_steps: int, step: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return 1.0


def steps_per_epoch(data: Data, batch_size: int) -> int | None:
    """Optimiser steps in one pass over ``data`` (``None``: a stream of unknown length): its batches, less a
    last batch of one sample, which :func:`train_model` skips."""
    if isinstance(data, Stream) and isinstance(data.source, DataLoader):
        try:
            return len(data.source)
        except TypeError:
            return None
    n = sample_count(data)
    if n is None:
        return None
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def train_model(
    model: nn.Module,
    train: Data,
    recipe: TrainRecipe,
    progress: bool = False,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy, deterministically.

    The global torch RNG is seeded with ``recipe.seed`` for the duration of training
    (and restored afterwards); shuffling uses its own seeded generator. Results are
    bit-identical on CPU for the same thread count.

    Args:
        model: Module mapping a batch of inputs to ``(N, C)`` logits.
        train: the training split, in memory or streamed (:mod:`methods.streams`).
        recipe: Epochs, learning rate, batch size, weight decay and seed.
        progress: Show a tqdm progress bar over the optimiser steps.
        loss: ``loss(outputs, targets)``; default :func:`methods.objective.task_loss`.
        device: where the steps run (:mod:`methods.compute`); the model is back on the CPU afterwards.

    Returns:
        The same ``model``, trained and switched to eval mode.
    """
    from tqdm import tqdm

    per_epoch = steps_per_epoch(train, recipe.batch_size)
    if per_epoch == 0:
        raise ValueError("cannot train on an empty dataset")
    if per_epoch is None and recipe.schedule != "constant":
        raise UsageError(f"the {recipe.schedule} schedule needs the training data's length; give the dataset "
                         "__len__ or use schedule='constant'")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = recipe.epochs * per_epoch if per_epoch is not None else None
    if total is not None:
        schedule = functools.partial(_lr_factor, recipe.schedule, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    bar = tqdm(total=total, disable=not progress, desc="training", unit="step")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        shuffle = torch.Generator().manual_seed(recipe.seed)
        model.train()
        for epoch in range(recipe.epochs):
            for number, (inputs, labels) in enumerate(epoch_batches(train, recipe.batch_size, shuffle, device)):
                if number > 0 and len(labels) == 1:
                    continue  # a batch of one sample breaks BatchNorm statistics
                optimizer.zero_grad(set_to_none=True)
                value = (loss or task_loss)(model(inputs), labels)
                value.backward()
                optimizer.step()
                if total is not None:
                    scheduler.step()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value.item():.3f}", refresh=False)
    bar.close()
    return model.to("cpu").eval()


EVAL_INPUT_ELEMENTS = 2**22
"""Input elements per evaluation batch at most (a thousand 28x28 images, 151 images of 3x96x96): a model's
activations grow with its input, so large inputs are evaluated in smaller batches."""


def eval_batch_size(data: Data, largest: int = 1000) -> int:
    """Samples per evaluation batch: ``largest``, fewer for large samples (:data:`EVAL_INPUT_ELEMENTS`), at most
    :data:`methods.streams.EVAL_BATCH` for a streamed split."""
    if not isinstance(data, TensorDataset):
        return min(largest, EVAL_BATCH)
    per_sample = max(1, data.tensors[0][:1].numel())
    return max(1, min(largest, EVAL_INPUT_ELEMENTS // per_sample))


def evaluate_accuracy(model: nn.Module, data: Data, batch_size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (see :func:`evaluate`)."""
    return evaluate(model, data, "accuracy", batch_size)


def evaluate(
    model: nn.Module,
    data: Data,
    metric: str | Metric = "accuracy",
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """The value of ``metric`` for ``model`` on ``data``, in eval mode under ``torch.inference_mode``.

    The model's train/eval mode is restored afterwards.

    Args:
        model: Module mapping a batch of inputs to outputs the metric reads (class scores in the last dim).
        data: (inputs, targets) samples, in memory or streamed in order (:mod:`methods.streams`).
        metric: A name in :data:`methods.objective.METRICS`, or a :class:`methods.objective.Metric`.
        batch_size: Samples per forward pass (does not change the result); default :func:`eval_batch_size`.
        device: where the forward passes run; the model is back on the CPU afterwards.

    Returns:
        The metric's value over every sample (accuracy in [0, 1], bits per character, ...).
    """
    scorer = metric if isinstance(metric, Metric) else METRICS[metric]
    batch_size = eval_batch_size(data) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.to(device)
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode():
            for inputs, targets in epoch_batches(data, batch_size, device=device):
                batch_total, batch_count = scorer.batch(model(inputs), targets)
                total, count = total + batch_total, count + batch_count
        if count == 0:
            raise ValueError("cannot evaluate on an empty dataset")
    finally:
        model.to("cpu")
        model.train(was_training)
    return total / max(count, 1)
