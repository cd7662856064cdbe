"""Sparse variational dropout (Molchanov, Ashukha and Vetrov, 2017).

Every compressible weight ``w`` gets a learned noise variance ``sigma^2``: the layer computes with
``w + sigma * eps`` and the training minimises the task loss plus the KL divergence of the log-uniform prior
(Molchanov's approximation), which pushes ``log alpha = log(sigma^2 / w^2)`` up for weights the task does not
need. Weights with ``log alpha`` above the threshold (3: a dropout rate above 0.95) are pruned; the rest keep
their means ``w``. Linear and convolution layers use the local reparameterisation trick (noise on the
pre-activations, one draw per sample); other layers (recurrent, attention, embeddings) draw weight noise once per
batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from methods.layer_kinds import owner_of
from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, penalised_training, unnoised
from methods.streams import sample_count

K1, K2, K3 = 0.63576, 1.87320, 1.48695
"""Constants of Molchanov et al.'s approximation of the KL divergence to the log-uniform prior."""
LOG_ALPHA_LIMIT = 8.0
"""``log alpha`` is clamped to ``[-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT]`` where the KL is computed."""
THRESHOLD = 3.0
"""Weights whose ``log alpha`` exceeds this are pruned (Molchanov et al.)."""
INITIAL_LOG_SIGMA2 = -10.0
"""Initial ``log sigma^2``: almost no noise, so training starts from the trained model."""
KL_WARMUP = 0.3
"""Fraction of the steps over which the KL term's weight rises linearly from 0 to its full value."""


def negative_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of ``-KL(q || p)`` per weight (up to a constant)."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


def log_alpha_of(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``log(sigma^2 / w^2)``, clamped to the range where the KL approximation is used."""
    return (log_sigma2 - torch.log(weight.pow(2) + 1e-8)).clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)


def kept_mask(log_alpha: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """The weights that stay: ``log alpha <= threshold``."""
    return log_alpha <= threshold


class WeightNoise(nn.Module):
    """Parametrization ``w -> w + sigma * eps`` with fresh noise at every access in training mode."""

    def __init__(self, log_sigma2: torch.Tensor) -> None:
        super().__init__()
        self.log_sigma2 = log_sigma2

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight
        return weight + torch.exp(0.5 * self.log_sigma2) * torch.randn_like(weight)


def local_noise(module: nn.Module, log_sigma2: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    """Adds the pre-activation noise of the local reparameterisation trick to a Linear or convolution layer."""

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return output
        squared = inputs[0].pow(2)
        variance = torch.exp(log_sigma2)
        if isinstance(layer, nn.Linear):
            var = F.linear(squared, variance)
        else:
            var = layer._conv_forward(squared, variance, None)  # noqa: SLF001 - the layer's own padding and stride
        return output + torch.sqrt(var + 1e-8) * torch.randn_like(output)

    return module.register_forward_hook(hook)


def add_weight_noise(
    model: nn.Module, log_sigma2: dict[str, torch.Tensor]
) -> tuple[list[torch.utils.hooks.RemovableHandle], list[tuple[nn.Module, str]]]:
    """Gives each weight ``key`` its learned noise: pre-activation noise (local reparameterisation) on Linear and
    convolution weights, weight noise otherwise; returns the hooks and the parametrized ``(module, name)`` pairs to
    remove afterwards."""
    handles, parametrized = [], []
    for key, variance in log_sigma2.items():
        owner, attr = owner_of(model, key)
        local = isinstance(owner, (nn.Linear, nn.modules.conv._ConvNd))
        if attr == "weight" and local and not isinstance(owner, nn.modules.conv._ConvTransposeNd):
            handles.append(local_noise(owner, variance))
        else:
            parametrize.register_parametrization(owner, attr, WeightNoise(variance))
            parametrized.append((owner, attr))
    return handles, parametrized


class VariationalDropout(LearnedMethod):
    """Sparse variational dropout: per-weight learned noise, weights with ``log alpha > 3`` pruned."""

    description: ClassVar[str] = "sparse variational dropout (Molchanov et al. 2017): log-alpha > 3 pruned"
    threshold: float = THRESHOLD

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains the weights and their log-variances; prunes the weights above the threshold."""
        model.to(target.device)
        torch.manual_seed(settings.seed)
        weights = {key: model.get_parameter(key) for key in target.keys}
        log_sigma2 = {
            key: torch.full_like(w, INITIAL_LOG_SIGMA2, requires_grad=True) for key, w in weights.items()
        }
        handles, parametrized = add_weight_noise(model, log_sigma2)
        samples = sample_count(target.train) or 1

        def penalty(progress: float) -> torch.Tensor:
            ramp = min(1.0, progress / KL_WARMUP) if KL_WARMUP > 0 else 1.0
            kl = sum(-negative_kl(log_alpha_of(unnoised(model, key), s)).sum()
                     for key, s in log_sigma2.items())
            return settings.strength * ramp * kl / samples

        try:
            seconds = penalised_training(model, target, settings, penalty, extra=[(list(log_sigma2.values()), None)])
        finally:
            for handle in handles:
                handle.remove()
            for owner, attr in parametrized:
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
            model.to("cpu")
        statistics = {}
        with torch.no_grad():
            for key in target.keys:
                weight = model.get_parameter(key)
                log_alpha = log_alpha_of(weight, log_sigma2[key].detach().cpu())
                weight.mul_(kept_mask(log_alpha, self.threshold))
                statistics[key] = log_alpha
        return Learned(seconds, statistics)
