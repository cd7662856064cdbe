"""Group-sparse regularisation: Structured Sparsity Learning (Wen et al. 2016; Scardapane et al. 2016).

Each channel of a channel group (a filter, a neuron) is one group of parameters: the producers' output rows, biases
and BatchNorm entries and the consumers' input columns (:mod:`methods.coupled_channels`). The training adds
``lambda * sqrt(size_g) * ||w_g||_2`` per group through its proximal step (group soft-thresholding after each
optimizer step), so groups reach exactly zero and structured pruning then removes them without changing the
outputs. Torch-Pruning's ``GroupNormPruner.regularize`` is not used: it adds a weighted L2 gradient that shrinks
groups but never makes one exactly zero.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, parameters_of, penalised_training

LAMBDA = 0.1
"""Default penalty per unit of ``sqrt(size) * ||w_g||`` (multiplied by ``LearnedSettings.strength``)."""


def group_shrink(norms: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Factors of the group soft-thresholding step: ``max(0, 1 - t / ||w_g||)`` (0 for a zero group)."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > thresholds, 1.0 - thresholds / safe, torch.zeros_like(norms))


class GroupLasso(LearnedMethod):
    """Group lasso over channels (filters and neurons, with their inputs), by proximal steps."""

    structured: ClassVar[bool] = True
    description: ClassVar[str] = "group lasso over channels (Wen et al. 2016), zeroed channels removed"

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains with the group penalty; groups it drives to zero stay exactly zero."""
        model.to(target.device)
        params = parameters_of(model)
        weight = {g.leader: settings.strength * LAMBDA * g.sizes().sqrt().to(target.device) for g in target.groups}

        def prox(lr: float) -> None:
            with torch.no_grad():
                for group in target.groups:
                    norms = group.squares(params).sqrt()
                    group.scale(params, group_shrink(norms, lr * weight[group.leader].to(norms)))

        try:
            seconds = penalised_training(model, target, settings, lambda _: 0.0, after_step=prox)
        finally:
            model.to("cpu")
        params = parameters_of(model)
        with torch.no_grad():
            statistics = {g.leader: g.squares(params).sqrt() for g in target.groups}
        return Learned(seconds, statistics)
