"""Soft weight-sharing (Ullrich, Meeds and Welling, 2017).

All compressible weights share one Gaussian-mixture prior: a zero component (mean fixed at 0, mixing weight fixed
at ``ZERO_WEIGHT``) and ``COMPONENTS`` components whose means, variances and mixing weights are learned with the
weights. The training adds ``tau`` times the negative log-prior of the weights, which pulls each weight towards a
component mean. At the end every weight is snapped to the mean of the component most responsible for it: weights of
the zero component are pruned, the rest take at most ``COMPONENTS`` distinct values, which the k-means codebook
path then stores exactly (a layer's codebook holds the means its weights use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, penalised_training

COMPONENTS = 16
"""Non-zero mixture components (Ullrich et al. use 16 plus the zero component: 4-bit codes)."""
ZERO_WEIGHT = 0.99
"""Mixing weight of the zero component (fixed, as in the paper)."""
TAU = 0.005
"""Default weight of the negative log-prior per training step (multiplied by ``LearnedSettings.strength``)."""
PRIOR_SAMPLE = 65536
"""Weights the log-prior is evaluated on per step (a fresh uniform draw; the sum is scaled to all weights)."""
LOG_VARIANCE_RANGE = (-14.0, 0.0)
"""Learned log-variances are clamped here, so that no component collapses onto one weight."""


class Mixture(nn.Module):
    """The shared prior: a zero component and ``components`` learned ones."""

    def __init__(self, weights: Sequence[torch.Tensor], components: int = COMPONENTS) -> None:
        super().__init__()
        flat = torch.cat([w.detach().reshape(-1) for w in weights])
        spread = float(flat.abs().max()) or 1.0
        self.means = nn.Parameter(torch.linspace(-spread, spread, components + 1)[torch.arange(components + 1) !=
                                                                                  components // 2])
        width = 2 * spread / components
        self.log_variances = nn.Parameter(torch.full((components + 1,), 2 * math.log(width / 4)))
        self.logits = nn.Parameter(torch.zeros(components))

    def parameters_and_means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means, log-variances and log mixing weights of all components, the zero component first."""
        means = torch.cat([self.means.new_zeros(1), self.means])
        log_variances = self.log_variances.clamp(*LOG_VARIANCE_RANGE)
        log_weights = torch.cat([self.means.new_full((1,), math.log(ZERO_WEIGHT)),
                                 math.log(1 - ZERO_WEIGHT) + torch.log_softmax(self.logits, 0)])
        return means, log_variances, log_weights

    def log_joint(self, values: torch.Tensor) -> torch.Tensor:
        """``log pi_j + log N(w | mu_j, sigma_j^2)`` for every weight (rows) and component (columns)."""
        means, log_variances, log_weights = self.parameters_and_means()
        squared = (values.reshape(-1, 1) - means).pow(2)
        return log_weights - 0.5 * (math.log(2 * math.pi) + log_variances + squared / log_variances.exp())

    def negative_log_prior(self, values: torch.Tensor) -> torch.Tensor:
        """``-sum_i log sum_j pi_j N(w_i | mu_j, sigma_j^2)``."""
        return -torch.logsumexp(self.log_joint(values), dim=1).sum()

    def snapped(self, values: torch.Tensor) -> torch.Tensor:
        """Each value replaced by the mean of its most responsible component (0 for the zero component)."""
        means, _, _ = self.parameters_and_means()
        with torch.no_grad():
            return means[self.log_joint(values).argmax(dim=1)].reshape(values.shape)


class SoftWeightSharing(LearnedMethod):
    """A learned Gaussian-mixture prior over all weights; weights snapped to component means, zeros pruned."""

    description: ClassVar[str] = ("soft weight-sharing (Ullrich et al. 2017): a learned mixture prior, weights "
                                  "snapped to its means")

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains weights and mixture; snaps every weight to its component's mean."""
        model.to(target.device)
        weights = [model.get_parameter(key) for key in target.keys]
        mixture = Mixture(weights).to(target.device)

        total = sum(w.numel() for w in weights)
        generator = torch.Generator().manual_seed(settings.seed)

        def penalty(_: float) -> torch.Tensor:
            flat = torch.cat([w.reshape(-1) for w in weights])
            if total > PRIOR_SAMPLE:
                flat = flat[torch.randint(total, (PRIOR_SAMPLE,), generator=generator).to(flat.device)]
            return settings.strength * TAU * mixture.negative_log_prior(flat) * (total / len(flat))

        try:
            seconds = penalised_training(model, target, settings, penalty, extra=[(list(mixture.parameters()), None)])
            with torch.no_grad():
                for weight in weights:
                    weight.copy_(mixture.snapped(weight))
        finally:
            model.to("cpu")
        means, log_variances, log_weights = (t.detach().cpu() for t in mixture.parameters_and_means())
        return Learned(seconds, {"means": means, "log_variances": log_variances, "log_weights": log_weights})
