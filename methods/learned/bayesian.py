"""Bayesian compression with the group normal-Jeffreys prior (Louizos, Ullrich and Welling, 2017; BC-GNJ).

Every channel of a channel group gets a multiplicative scale ``z ~ N(mu_z, sigma_z^2)`` on its output slices (a
draw per batch) with the log-uniform (Jeffreys) prior, initialised at the slices' root-mean-square (which the
slices are divided by), and every compressible weight a Gaussian posterior ``N(mu_w, sigma_w^2)`` with the prior
``N(0, 1)`` given its scale (local reparameterisation on linear and convolution layers, as in
:mod:`methods.learned.variational_dropout`). The training minimises the task loss plus both KL terms per sample.
Channels whose ``log alpha_z = log(sigma_z^2 / mu_z^2)`` exceeds ``THRESHOLD`` are removed, the rest keep
``mu_z`` folded into their weights. Each layer's bit width is read from the posterior variance of its kept weights,
a fixed-point form of the paper's unit round-off rule: the code step may be as coarse as the posterior's typical
standard deviation, ``bits = ceil(log2(2 max|w| / (2 sigma)))``, clamped to 1-8 (statistics ``bits:KEY``). Unlike
the paper, ``sigma`` is the weights' own posterior deviation (times the scale's mean), without the scale's
variance: that noise is shared by a whole channel, a tolerance of its scale rather than of each weight's code.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.coupled_channels import CoupledChannels
from methods.learned.base import (
    Learned,
    LearnedMethod,
    LearnedSettings,
    Target,
    parameters_of,
    penalised_training,
    unnoised,
)
from methods.learned.l0_gates import gate_outputs
from methods.learned.variational_dropout import INITIAL_LOG_SIGMA2, KL_WARMUP, add_weight_noise, negative_kl
from methods.streams import sample_count

THRESHOLD = 0.0
"""Channels whose scale has ``log alpha_z`` above this (noise larger than the mean) are removed."""
SCALE_LR = 0.05
"""Adam learning rate of the channel scales' means and log-variances: a short training must be able to move them."""
VARIANCE_LR = 0.01
"""Adam learning rate of the weights' log-variances (they set the bit widths)."""
MAX_BITS = 8
"""Largest bit width read from the posterior (the linear codes' range)."""


class _Scales(nn.Module):
    """The multiplicative scales of one channel group: their posterior means, log-variances and current draw."""

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.mean = nn.Parameter(initial.clone())
        self.log_variance = nn.Parameter(torch.full_like(initial, INITIAL_LOG_SIGMA2))
        self.current = self.mean.detach()

    def log_alpha(self) -> torch.Tensor:
        """``log(sigma_z^2 / mu_z^2)`` per channel."""
        return self.log_variance - torch.log(self.mean.pow(2) + 1e-8)


def posterior_bits(mean: torch.Tensor, variance: torch.Tensor) -> int:
    """Bits of a fixed-point code whose step is about the posterior's typical standard deviation: 1-8."""
    kept = mean != 0
    if not bool(kept.any()):
        return 1
    sigma = float(variance[kept].mean().sqrt())
    span = float(mean[kept].abs().max()) * 2
    if sigma <= 0:
        return MAX_BITS
    return int(min(MAX_BITS, max(1, math.ceil(math.log2(max(span / (2 * sigma), 1.0))))))


def _row_scales(group: CoupledChannels, key: str, rows: int, scales: _Scales) -> torch.Tensor:
    """The scale mean of each row of weight ``key`` (1 for rows the group does not scale)."""
    mean = torch.ones(rows)
    for part in group.slices:
        if part.output and part.name == key and part.dim == 0:
            mean[part.positions] = scales.mean.detach().cpu()[part.channels]
    return mean


class BayesianCompression(LearnedMethod):
    """Group normal-Jeffreys scales on channels plus Gaussian weights; noisy channels removed, bits from variance."""

    structured: ClassVar[bool] = True
    description: ClassVar[str] = ("Bayesian compression, group normal-Jeffreys prior (Louizos et al. 2017): noisy "
                                  "channels removed, per-layer bits from the posterior variance")

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains weights, weight variances and channel scales; removes channels, folds scales, reads bits."""
        model.to(target.device)
        torch.manual_seed(settings.seed)
        scales = {g.leader: _Scales(_factor_out_scale(model, g).to(target.device)) for g in target.groups}
        weights = {key: model.get_parameter(key) for key in target.keys}
        log_sigma2 = {key: torch.full_like(w, INITIAL_LOG_SIGMA2, requires_grad=True) for key, w in weights.items()}
        handles, registered = [], []
        samples = sample_count(target.train) or 1

        def draw() -> None:
            for scale in scales.values():
                scale.current = scale.mean + torch.exp(0.5 * scale.log_variance) * torch.randn_like(scale.mean)

        def penalty(progress: float) -> torch.Tensor:
            ramp = min(1.0, progress / KL_WARMUP)
            kl = sum(-negative_kl(s.log_alpha().clamp(-8, 8)).sum() for s in scales.values())
            for key, log_var in log_sigma2.items():
                mean = unnoised(model, key)
                kl = kl + (-0.5 * log_var + 0.5 * (log_var.exp() + mean.pow(2)) - 0.5).sum()
            return settings.strength * ramp * kl / samples

        try:
            for group in target.groups:
                registered += gate_outputs(model, group, scales[group.leader])
            handles, noised = add_weight_noise(model, log_sigma2)
            registered += noised
            extra = [([p for s in scales.values() for p in s.parameters()], SCALE_LR),
                     (list(log_sigma2.values()), VARIANCE_LR)]
            seconds = penalised_training(model, target, settings, penalty, extra=extra, before_step=draw)
        finally:
            for handle in handles:
                handle.remove()
            for scale in scales.values():
                scale.current = scale.mean.detach()
            model.eval()  # weight noise off: the scales are folded in at their means
            for owner, attr in dict.fromkeys(registered):
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
            model.to("cpu")
        return Learned(seconds, self._finish(model, target, scales, log_sigma2))

    @staticmethod
    def _finish(model: nn.Module, target: Target, scales: dict[str, _Scales],
                log_sigma2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Removes the noisy channels and reads each weight's bit width; the statistics."""
        params = parameters_of(model)
        statistics: dict[str, torch.Tensor] = {}
        removed = {}
        for group in target.groups:
            log_alpha = scales[group.leader].log_alpha().detach().cpu()
            removed[group.leader] = log_alpha > THRESHOLD
            group.scale(params, (~removed[group.leader]).to(torch.float32), outputs_only=True)
            statistics[group.leader] = log_alpha
        for key in target.keys:
            weight = params[key].detach()
            mean_z = torch.ones(weight.shape[0])
            for group in target.groups:
                mean_z = mean_z * _row_scales(group, key, weight.shape[0], scales[group.leader])
            variance = mean_z.pow(2).reshape(-1, *([1] * (weight.dim() - 1))) * log_sigma2[key].detach().cpu().exp()
            statistics[f"bits:{key}"] = torch.tensor(posterior_bits(weight, variance))
        return statistics


def _factor_out_scale(model: nn.Module, group: CoupledChannels) -> torch.Tensor:
    """Divides each channel's output slices by their root-mean-square and returns it (the scale's initial mean):
    ``w = z w~`` with ``w~`` on the scale of the prior ``N(0, 1)``, so that shrinking ``z`` costs the channel's
    output and cannot be undone for free by growing ``w~``."""
    params = parameters_of(model)
    with torch.no_grad():
        rms = (group.squares(params, outputs_only=True).cpu() / group.sizes(outputs_only=True)).sqrt()
        rms = torch.where(rms > 0, rms, torch.ones_like(rms))
        group.scale(params, 1.0 / rms, outputs_only=True)
    return rms
