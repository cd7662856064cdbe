"""Once-for-all supernet training (Cai et al., 2020): one network whose every width is a working sub-network.

Starting from the trained model, each channel group (a filter group, a residual stream, a hidden layer) becomes
elastic: keeping its first ``k`` channels is a sub-network, for every ``k`` the search may ask for
(``Target.widths``). Training is progressive shrinking with knowledge distillation from the original model:

1. The widths are opened in ``PHASES`` phases, the largest first (phase ``p`` allows the widths down to
   ``C - (C - smallest) * p / PHASES``), with ``PHASE_SHARES`` of the passes and a fresh Adam optimizer each,
   cosine-annealed; later phases run at ``LATER_LR`` times the rate after a short warm-up (the paper's schedule).
2. At the start of each phase every group's channels are sorted by importance (the L1 norm of the consumers' input
   columns) inside the segments between the widths already trained, so each sub-network trained before keeps
   exactly its channels (``re_organize_middle_weights`` of the reference code).
3. Each step draws ``SUBNETS`` sub-networks (every group's width uniformly from the phase's widths, as the
   reference samples; no sandwich rule), adds up their gradients of the task loss plus ``strength`` times the
   distillation loss against the original model's outputs, and takes one optimizer step.

A sub-network is trained by masking: the output slices (rows, bias, BatchNorm entries) of channels ``>= k`` are
multiplied by 0, which equals removing them for activations with ``f(0) = 0``. The model leaves with the same
modules, parameters and buffers, its channels permuted, nothing zeroed, its BatchNorm statistics re-estimated at full
width. Candidates then cut it with the ``index`` channel importance (the first channels kept) and recalibrate their
BatchNorm statistics, with no fine-tuning. ``Learned.statistics`` holds each group's channel order under
``"ofa:order:LEADER"`` (channel ``c`` of the supernet is channel ``order[c]`` of the original).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from methods.coupled_channels import CoupledChannels
from methods.finetune import recalibrate_batchnorm
from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Loss, Target, training_steps
from methods.learned.l0_gates import gate_outputs
from methods.objective import soft_target_loss, task_loss
from methods.streams import epoch_batches, head

PHASES = 2
"""Progressive-shrinking phases of the widths (the reference's expand-ratio phases 1 and 2)."""
PHASE_SHARES = (25, 120)
"""Relative passes of phase 1 and of each later phase (the reference's 25 and 120 epochs)."""
LATER_LR = 3.0
"""Learning-rate multiplier of the later phases (the reference: 7.5e-3 against 2.5e-3)."""
WARMUP = 5 / 125
"""Fraction of a later phase's steps warming the learning rate up from the first phase's."""
SUBNETS = 4
"""Sub-networks drawn per step, their gradients added (the reference's ``dynamic_batch_size`` of the width phases)."""
CALIBRATION_IMAGES = 2000
"""Training inputs re-estimating the full-width BatchNorm statistics at the end (the reference's subset size)."""


class _Widths(nn.Module):
    """One group's current channel mask (1 for the kept first channels), read by the gating parametrization."""

    def __init__(self, channels: int, device: torch.device | str) -> None:
        super().__init__()
        self.current = torch.ones(channels, device=device)


def phase_widths(widths: Sequence[int], channels: int, phase: int, phases: int = PHASES) -> tuple[int, ...]:
    """The widths (largest first) trained in ``phase`` (1-based): those down to ``C - (C - smallest) p / phases``,
    and always the full width."""
    smallest = min([*widths, channels])
    floor = channels - (channels - smallest) * phase / phases
    return tuple(sorted({int(w) for w in widths if w >= floor - 1e-9} | {channels}, reverse=True))


def importance_order(importance: torch.Tensor, trained: Sequence[int]) -> torch.Tensor:
    """The permutation (new slot ``c`` takes channel ``order[c]``) sorting channels by descending ``importance``
    within each segment between the widths ``trained`` so far, so every trained first-``k`` set stays the same."""
    channels = len(importance)
    positions = torch.arange(channels)
    segment = torch.zeros(channels, dtype=torch.int64)
    for width in set(trained):
        if 0 < width < channels:
            segment += (positions >= width).long()
    by_importance = torch.argsort(importance, descending=True, stable=True)
    return by_importance[torch.argsort(segment[by_importance], stable=True)]


class OnceForAll(LearnedMethod):
    """An elastic-width supernet by progressive shrinking with distillation; nothing removed."""

    structured: ClassVar[bool] = False
    elastic: ClassVar[bool] = True
    description: ClassVar[str] = ("once-for-all supernet (Cai et al. 2020): elastic widths by progressive shrinking "
                                  "with distillation")

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains every allowed width of every group; see the module docstring."""
        from tqdm import tqdm

        model.to(target.device)
        teacher = copy.deepcopy(model).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        groups = list(target.groups)
        widths = {g.leader: _allowed(g, target) for g in groups}
        masks = {g.leader: _Widths(g.channels, target.device) for g in groups}
        orders = {g.leader: torch.arange(g.channels) for g in groups}
        generator = torch.Generator().manual_seed(settings.seed)
        loss = target.loss or task_loss
        total = training_steps(target.train, settings)
        shares = [PHASE_SHARES[min(p, len(PHASE_SHARES) - 1)] for p in range(PHASES)]
        phase_steps = [max(1, round(total * share / sum(shares))) for share in shares]
        bar = tqdm(total=sum(phase_steps), desc=target.progress, disable=not target.progress, file=sys.stderr,
                   unit="step", dynamic_ncols=True)
        start = time.perf_counter()
        trained: dict[str, tuple[int, ...]] = {g.leader: () for g in groups}
        try:
            for phase, steps in enumerate(phase_steps, start=1):
                allowed = {g.leader: phase_widths(widths[g.leader], g.channels, phase) for g in groups}
                for group in groups:
                    order = importance_order(group.l1(dict(model.named_parameters())), trained[group.leader])
                    group.permute(model, order)
                    orders[group.leader] = orders[group.leader][order]
                with _gated(model, groups, masks):
                    self._phase(model, teacher, target, settings, loss, masks, allowed, generator, phase, steps, bar)
                trained = allowed
        finally:
            bar.close()
            model.eval()
        recalibrate_batchnorm(model, head(target.train, CALIBRATION_IMAGES).tensors[0], device=target.device)
        model.to("cpu")
        statistics = {f"ofa:order:{leader}": order for leader, order in orders.items()}
        return Learned(time.perf_counter() - start, statistics)

    @staticmethod
    def _phase(
        model: nn.Module, teacher: nn.Module, target: Target, settings: LearnedSettings, loss: Loss,
        masks: dict[str, _Widths], allowed: dict[str, tuple[int, ...]], generator: torch.Generator, phase: int,
        steps: int, bar: Any,
    ) -> None:
        """One progressive-shrinking phase of ``steps`` optimizer steps."""
        base_lr = settings.lr * (LATER_LR if phase > 1 else 1.0)
        warmup = int(WARMUP * steps) if phase > 1 else 0
        optimizer = torch.optim.Adam(model.parameters(), lr=base_lr)
        model.train()
        step = 0
        while step < steps:
            passed = step
            for inputs, labels in epoch_batches(target.train, settings.batch_size, generator, target.device):
                if step < warmup:
                    lr = settings.lr + (base_lr - settings.lr) * step / warmup
                else:
                    lr = 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.no_grad():
                    soft = teacher(inputs)
                optimizer.zero_grad(set_to_none=True)
                shown = 0.0
                for _ in range(SUBNETS):
                    for leader, mask in masks.items():
                        choices = allowed[leader]
                        width = choices[int(torch.randint(len(choices), (1,), generator=generator))]
                        mask.current = (torch.arange(len(mask.current), device=mask.current.device) < width).to(
                            mask.current)
                    outputs = model(inputs)
                    value = loss(outputs, labels)
                    if settings.strength > 0:
                        if labels.dtype.is_floating_point:
                            value = value + settings.strength * F.mse_loss(outputs, soft)
                        else:
                            value = value + settings.strength * soft_target_loss(outputs, soft, 1.0)
                    value.backward()
                    shown += float(value.detach()) / SUBNETS
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(phase=f"{phase}/{PHASES}", loss=f"{shown:.3f}", lr=f"{lr:.1e}",
                                refresh=False)
                if step >= steps:
                    break
            if step == passed:
                raise ValueError("cannot train on an empty dataset")


def _allowed(group: CoupledChannels, target: Target) -> tuple[int, ...]:
    """The group's widths the search may ask for (every count when the target names none)."""
    given = (target.widths or {}).get(group.leader)
    counts = {int(w) for w in given} if given else set(range(1, group.channels + 1))
    counts = {w for w in counts if 1 <= w <= group.channels} | {group.channels}
    return tuple(sorted(counts, reverse=True))


@contextmanager
def _gated(model: nn.Module, groups: Sequence[CoupledChannels], masks: dict[str, _Widths]) -> Iterator[None]:
    """Multiplies every group's output slices by its current mask while inside; on exit the masks are opened and
    the parametrizations removed (the weights exactly as trained)."""
    registered: list[tuple[nn.Module, str]] = []
    try:
        for group in groups:
            registered += gate_outputs(model, group, masks[group.leader])
        yield
    finally:
        for mask in masks.values():
            mask.current = torch.ones_like(mask.current)
        for owner, attr in registered:
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
