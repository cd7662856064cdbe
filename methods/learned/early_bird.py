"""Early-bird tickets (You et al., 2020): find the channel mask early in training, then train only the ticket.

Training (from the model's untrained weights when they are known, else from its trained ones) carries network
slimming's L1 penalty (Liu et al., 2017) on one scale per channel (a filter, a neuron; the scale multiplies the
channel's output slices, so models with and without BatchNorm are treated alike). After each pass over the data
the channels whose scales rank in the lowest ``PRUNE_RATIO`` over the whole network (more with a higher
``LearnedSettings.strength``) (at least one channel of each
group kept) form the mask; when the last ``WINDOW`` consecutive masks each differ from the one before in at most
``DISTANCE`` of the channels, the mask has converged: that is the early-bird ticket. Its channels are removed
(exactly zero) and the remaining passes of the budget train the ticket without the penalty, as the paper retrains.
If the masks never converge the last one is the ticket. ``Learned.statistics`` holds the scales and, under
``"early_bird:epoch"``, the pass at which the ticket was drawn.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, parameters_of, penalised_training
from methods.learned.l0_gates import gate_outputs
from methods.streams import sample_count

PRUNE_RATIO = 0.5
"""Fraction of all channels the ticket removes at strength 1 (the paper's ``p``; 30-70% in its experiments); at
strength ``s`` it removes ``1 - (1 - PRUNE_RATIO) ** s`` (nothing at 0, 75% at 2)."""
LAMBDA = 1e-4
"""Weight of the L1 penalty on the channel scales, per sample and channel (times ``LearnedSettings.strength``)."""
DISTANCE = 0.1
"""Largest fraction of channels two consecutive masks may differ in for the masks to count as converged."""
WINDOW = 5
"""Consecutive mask distances that must all be at most ``DISTANCE`` (the paper's FIFO queue)."""


class _Scales(nn.Module):
    """One trainable scale per channel of a group, read by the gating parametrization as ``current``."""

    def __init__(self, channels: int, device: torch.device | str) -> None:
        super().__init__()
        self.current = nn.Parameter(torch.ones(channels, device=device))


def ticket_mask(scales: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Channels kept (bool per group): the highest ``|scale|`` over the whole network, ``1 - ratio`` of all, and at
    least the largest one of every group."""
    if not scales:
        return {}
    flat = torch.cat([s.abs().flatten() for s in scales.values()])
    removed = int(ratio * flat.numel())
    threshold = torch.kthvalue(flat, removed).values if removed else flat.min() - 1
    masks = {}
    for name, scale in scales.items():
        keep = scale.abs() > threshold
        if not bool(keep.any()):
            keep = torch.zeros_like(keep).index_fill_(0, scale.abs().argmax(), True)
        masks[name] = keep
    return masks


def mask_distance(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Fraction of all channels whose kept flag differs between two masks."""
    changed = sum(int((first[name] != second[name]).sum()) for name in first)
    return changed / max(1, sum(m.numel() for m in first.values()))


class EarlyBird(LearnedMethod):
    """Network slimming until the channel mask stops changing, then the ticket trained alone."""

    structured: ClassVar[bool] = True
    description: ClassVar[str] = "early-bird tickets (You et al. 2020): slimming until the channel mask converges"

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Draws the ticket, removes its pruned channels and trains the rest for the remaining passes."""
        if target.initial is not None:
            model.load_state_dict(target.initial)
        model.to(target.device)
        scales = {g.leader: _Scales(g.channels, target.device) for g in target.groups}
        samples = sample_count(target.train) or 1
        ratio = 1 - (1 - PRUNE_RATIO) ** settings.strength
        history: list[dict[str, torch.Tensor]] = []
        distances: list[float] = []
        drawn: dict[str, float | bool] = {"epoch": 0, "converged": False}

        def penalty(_: float) -> torch.Tensor:
            total = sum(s.current.abs().sum() for s in scales.values())
            return settings.strength * LAMBDA * total / samples

        def check(epoch: int) -> bool:
            history.append(ticket_mask({n: s.current.detach().cpu() for n, s in scales.items()}, ratio))
            if len(history) > 1:
                distances.append(mask_distance(history[-2], history[-1]))
            drawn["epoch"] = epoch
            drawn["converged"] = len(distances) >= WINDOW and max(distances[-WINDOW:]) <= DISTANCE
            return bool(drawn["converged"])

        registered: list[tuple[nn.Module, str]] = []
        try:
            for group in target.groups:
                registered += gate_outputs(model, group, scales[group.leader])
            extra = [([s.current for s in scales.values()], None)]
            seconds = penalised_training(model, target, settings, penalty, extra=extra, after_epoch=check)
            if not drawn["converged"]:  # the whole budget passed: the last scales draw the ticket
                check(settings.epochs)
            mask = history[-1]
            with torch.no_grad():
                for name, scale in scales.items():
                    scale.current.mul_(mask[name].to(scale.current))
                    scale.current.requires_grad_(False)
            left = settings.epochs - drawn["epoch"]
            if left > 0:  # the ticket trained alone, its removed channels held at zero by their zero scales
                seconds += penalised_training(model, target, replace(settings, epochs=left), lambda _: 0.0)
        finally:
            for owner, attr in registered:
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
            model.to("cpu")
        params = parameters_of(model)
        for group in target.groups:
            group.scale(params, mask[group.leader].to(torch.float32), outputs_only=True)
        statistics = {name: s.current.detach().cpu() for name, s in scales.items()}
        statistics["early_bird:epoch"] = torch.tensor(float(drawn["epoch"]))
        return Learned(seconds, statistics)
