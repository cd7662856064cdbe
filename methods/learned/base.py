"""What a learned-sparsity method is: a penalised (re)training of the user's model that decides what to remove.

Unlike a saliency, which ranks a trained network's weights once, these methods learn what to remove while they
train (Louizos et al., Molchanov et al., Wen et al., Ullrich et al.). Each one starts from the task's trained
weights and leaves the model with exactly the same modules and parameters, the removed weights (or whole
channels) set to exactly zero. The pipeline then treats those zeros as already pruned (a policy's sparsity and
channel keep become floors, :mod:`methods.pipeline`) and codes the rest as usual.
"""

from __future__ import annotations

import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.coupled_channels import CoupledChannels
from methods.layer_kinds import owner_of
from methods.objective import task_loss
from methods.streams import Data, epoch_batches, sample_count

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LearnedSettings:
    """The penalised training every learned method runs (config ``export.learned_*``)."""

    epochs: float = 10.0
    """Passes over the training split."""
    lr: float = 1e-3
    """Adam learning rate (of the weights and of the method's own parameters)."""
    strength: float = 1.0
    """Multiplier of the method's default penalty strength (higher: more removed)."""
    batch_size: int = 64
    """Training batch size."""
    seed: int = 0
    """Seed of the batch order and of the method's noise."""

    def __post_init__(self) -> None:
        if not self.epochs > 0 or not self.lr > 0 or not self.strength >= 0 or self.batch_size < 1:
            raise ValueError("learned training needs epochs > 0, lr > 0, strength >= 0 and batch_size >= 1")


@dataclass
class Learned:
    """What a learned method left: the model (changed in place) and what it measured."""

    seconds: float
    """Wall time of the training."""
    statistics: dict[str, torch.Tensor] = field(default_factory=dict)
    """The method's own per-weight or per-channel quantity (log-alpha, gate value, group norm), by weight key or
    group leader."""
    cached: bool = False
    """True when the training was read from the cache (``seconds`` is then the original training's)."""


@dataclass(frozen=True)
class Target:
    """What a learned method trains on and where."""

    keys: Sequence[str]
    """Parameter names of the compressible weights (``fc1.weight``, ``rnn.weight_hh_l0``)."""
    groups: Sequence[CoupledChannels]
    """The channel groups the structured methods may penalise, gate and remove."""
    train: Data
    """Training split (in memory or streamed)."""
    loss: Loss | None = None
    """The task's loss (default :func:`methods.objective.task_loss`)."""
    device: torch.device | str = "cpu"
    """Where the training runs; the model is back on the CPU afterwards."""
    progress: str = ""
    """A progress bar's label on stderr (empty: no bar)."""
    initial: Mapping[str, torch.Tensor] | None = None
    """The model's untrained state, when known (a task this tool trained): methods that train from scratch start
    there."""
    widths: Mapping[str, Sequence[int]] | None = None
    """Per group leader, the channel counts the search may cut the group to (elastic methods train exactly these;
    a group left out: every count)."""


class LearnedMethod(ABC):
    """One learned-sparsity method; register an instance in :data:`methods.learned.LEARNED`."""

    structured: ClassVar[bool] = False
    """True when the method removes whole channels (their removal then makes the model faster, too)."""
    description: ClassVar[str] = ""
    """One line naming the method and its paper."""
    elastic: ClassVar[bool] = False
    """True for a supernet: it removes nothing, but orders every channel group so that each of its first-``k``
    sub-networks works without fine-tuning; candidates then cut groups by the ``index`` channel importance."""

    def applies_to(self, model: nn.Module, target: Target) -> str | None:
        """Why the method cannot train this model (one line), or None when it can (the default)."""
        return None

    @abstractmethod
    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains ``model`` in place from its current weights; afterwards its removed weights are exactly zero and
        it has the same modules, parameters and buffers as before (no hooks or parametrizations left)."""


def training_steps(train: Data, settings: LearnedSettings) -> int:
    """Optimizer steps of ``settings.epochs`` passes over ``train``."""
    return max(1, int(math.ceil(settings.epochs * (sample_count(train) or 0) / settings.batch_size)))


def penalised_training(
    model: nn.Module,
    target: Target,
    settings: LearnedSettings,
    penalty: Callable[[float], torch.Tensor | float],
    extra: Sequence[tuple[Sequence[torch.Tensor], float | None]] = (),
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[float], None] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> float:
    """Trains ``model`` (already on ``target.device``) on the task loss plus ``penalty(progress)``, returns seconds.

    Args:
        model: the network, trained in place, left in eval mode.
        target: training split, loss and device.
        settings: epochs, learning rate, batch size and seed.
        penalty: the method's per-sample penalty at ``progress`` (0 to 1 over the steps).
        extra: the method's own trainable tensors (trained with the weights), in groups with their own learning rate
            (``None``: ``settings.lr``).
        before_step: called before each forward pass (to draw the method's noise).
        after_step: called after each optimizer step with its learning rate (a proximal step).
        after_epoch: called after each full pass with the passes done; returning True ends the training there.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    steps = training_steps(target.train, settings)
    bar = tqdm(total=steps, desc=target.progress, disable=not target.progress, file=sys.stderr, unit="step",
               dynamic_ncols=True)
    loss = target.loss or task_loss
    groups = [{"params": list(model.parameters())}]
    groups += [{"params": list(tensors), "lr": settings.lr if lr is None else lr} for tensors, lr in extra if tensors]
    optimizer = torch.optim.Adam(groups, lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    step = epoch = 0
    try:
        while step < steps:
            passed = step
            for inputs, labels in epoch_batches(target.train, settings.batch_size, generator, target.device):
                if before_step is not None:
                    before_step()
                optimizer.zero_grad(set_to_none=True)
                task_value = loss(model(inputs), labels)
                value = task_value + penalty(step / steps)
                value.backward()
                optimizer.step()
                if after_step is not None:
                    after_step(settings.lr)
                step += 1
                bar.update(1)
                shown = float(task_value.detach())
                bar.set_postfix(loss=f"{shown:.3f}", penalty=f"{float(value.detach()) - shown:.3f}", refresh=False)
                if step >= steps:
                    break
            if step == passed:
                raise ValueError("cannot train on an empty dataset")
            epoch += 1
            if after_epoch is not None and step < steps and after_epoch(epoch):
                break
    finally:
        bar.close()
        model.eval()
    return time.perf_counter() - start


def unnoised(model: nn.Module, key: str) -> torch.Tensor:
    """The weight ``key`` itself: a parametrized weight's original (its mean under the methods' weight noise)."""
    owner, attr = owner_of(model, key)
    if parametrize.is_parametrized(owner, attr):
        return getattr(owner.parametrizations, attr).original
    return model.get_parameter(key)


def parameters_of(model: nn.Module) -> Mapping[str, torch.Tensor]:
    """The model's parameters by name."""
    return dict(model.named_parameters())
