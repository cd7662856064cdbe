"""Masked, quantization-aware fine-tuning and BatchNorm recalibration."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.layer_kinds import owner_of
from methods.objective import soft_target_loss, task_loss
from methods.quantizers import parametrization
from methods.streams import Data, epoch_batches

LR_SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules of a fine-tune."""
REWINDS = ("lr", "weights", "init")
"""What each round of iterative pruning restarts from (:attr:`FinetuneSettings.rewind`)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """A short masked, quantization-aware fine-tune."""

    steps: int = 0
    """Optimizer steps (0 disables fine-tuning)."""
    lr: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 64
    """Training batch size."""
    seed: int = 0
    """Seed of the batch order."""
    distill_alpha: float = 0.0
    """Weight of the distillation loss against the teacher's soft targets (0 = plain cross-entropy)."""
    distill_temperature: float = 4.0
    """Softmax temperature of the soft targets."""
    prune_rounds: int = 1
    """Iterative pruning: the steps are split over this many prune-then-retrain rounds whose sparsity
    rises on a cubic schedule; only the last round quantizes (1 = prune once, then fine-tune)."""

    lr_schedule: str = "constant"
    """``constant``, or ``cosine``: the learning rate decays from ``lr`` to 0 over the steps (of each round)."""
    rewind: str = "lr"
    """What each round of pruning restarts from: ``lr``, the learning-rate schedule only, on the weights the last
    round left (Renda et al. 2020's learning-rate rewinding); ``weights``, also the kept weights, reset to their
    values when the fine-tune began; ``init``, the kept weights reset to the model's initial, untrained values
    (Frankle and Carbin 2019's lottery tickets: iterative magnitude pruning with rewinding to initialisation; the
    masks always come from the latest trained weights)."""

    def __post_init__(self) -> None:
        if self.rewind not in REWINDS:
            raise ValueError(f"rewind must be one of {', '.join(REWINDS)}, got {self.rewind!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("fine-tune needs steps >= 0, lr > 0 and batch_size >= 1")
        if isinstance(self.prune_rounds, bool) or not isinstance(self.prune_rounds, int) or self.prune_rounds < 1:
            raise ValueError(f"prune_rounds must be a positive integer, got {self.prune_rounds!r}")
        if not 0.0 <= self.distill_alpha <= 1.0 or self.distill_temperature <= 0:
            raise ValueError("distill_alpha must be in [0, 1] and distill_temperature > 0")


@dataclass(frozen=True)
class CodeSpec:
    """How one layer's weights are coded."""

    bits: int
    """Code width (32 = fp32)."""
    quantizer: str = "linear"
    """A registered quantizer (``methods/quantizers/``); unused for fp32."""


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float,
    temperature: float,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The task loss mixed with Hinton et al.'s soft-target loss: ``(1-a) CE + a T^2 KL(teacher || student)`` (the
    task loss alone for float targets)."""
    hard = (loss or task_loss)(logits, labels)
    if teacher_logits is None or alpha == 0.0 or labels.dtype.is_floating_point:
        return hard
    soft = soft_target_loss(logits, teacher_logits, temperature)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def masked_finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    codes: Mapping[str, CodeSpec],
    train: Data,
    settings: FinetuneSettings,
    teacher: nn.Module | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Fine-tunes ``model`` in place; pruned weights stay zero and weights end on their code grid.

    Args:
        model: the (structurally pruned) network.
        masks: kept-weight masks per compressed weight: its parameter name (``rnn.weight_hh_l0``), or a layer's
            name standing for its ``weight``.
        codes: code width and quantizer per key of ``masks``; the weights must already hold their
            stored weights (``methods.quantizers.stored_weight``), which each quantizer's parametrization
            keeps on its codes.
        train: training split, in memory or streamed (:mod:`methods.streams`); a pass that ends before
            ``steps`` starts another.
        settings: steps, learning rate, batch size, seed, distillation weight and temperature.
        teacher: the original model, for distillation (used when ``settings.distill_alpha`` > 0).
        loss: the task's loss ``loss(outputs, targets)`` (default :func:`methods.objective.task_loss`).
        device: where the steps run; the model is back on the CPU afterwards.
    """
    if settings.steps == 0:
        return
    device = torch.device(device)
    model.to(device)
    if teacher is not None and device.type != "cpu":
        teacher = copy.deepcopy(teacher).to(device)  # the caller's teacher stays where it is
    owners = {name: owner_of(model, name) for name in masks}
    for name, mask in masks.items():
        code = codes[name]
        owner, attr = owners[name]
        module = parametrization(getattr(owner, attr).detach(), mask.to(device), code.bits, code.quantizer)
        parametrize.register_parametrization(owner, attr, module)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = None
    if settings.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    model.train()
    try:
        step = 0
        while step < settings.steps:
            passed = step
            for inputs, labels in epoch_batches(train, settings.batch_size, generator, device):
                optimizer.zero_grad(set_to_none=True)
                teacher_logits = None
                if teacher is not None and settings.distill_alpha > 0:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs)
                value = distillation_loss(
                    model(inputs), labels, teacher_logits, settings.distill_alpha, settings.distill_temperature, loss
                )
                value.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                step += 1
                if step >= settings.steps:
                    break
            if step == passed:
                raise ValueError("cannot fine-tune on an empty dataset")
    finally:
        for owner, attr in owners.values():
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
        model.to("cpu")
        model.eval()


def has_batchnorm(model: nn.Module) -> bool:
    """True when the model has BatchNorm layers whose statistics can be recalibrated."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_batchnorm(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 250, device: torch.device | str = "cpu"
) -> None:
    """Re-estimates BatchNorm running statistics on ``inputs`` (EagleEye-style), weights untouched; computed on
    ``device``, the model back on the CPU afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.to(device)
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size].to(device))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.to("cpu")
        model.eval()
