"""L0 regularisation through hard-concrete gates (Louizos, Welling and Kingma, 2017).

Every channel of a channel group (a filter, a neuron) gets a stochastic gate ``z`` in [0, 1] drawn from a
hard-concrete distribution with a learned location ``log alpha``; the gate multiplies the channel's output slices
(weight rows, bias, BatchNorm entries), and the training adds ``lambda / N`` times the expected number of
parameters whose gate is open. At the end each gate takes its deterministic value; channels whose gate is 0 are
exactly zero and structured pruning removes them, the others keep their gate folded into their weights.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.coupled_channels import CoupledChannels
from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, parameters_of, penalised_training
from methods.streams import sample_count

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
"""Temperature and stretch interval of the hard-concrete distribution (Louizos et al.)."""
LAMBDA = 0.005
"""Default weight of the expected L0 norm, per training sample (multiplied by ``LearnedSettings.strength``)."""
INITIAL_LOG_ALPHA = 2.0
"""Initial gate location: gates start almost surely open, so training starts from the trained model."""
GATE_LR = 0.05
"""Adam learning rate of the gate locations: a few hundred steps from a trained model must be able to close one."""


def gate_sample(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of the hard-concrete gates."""
    u = torch.rand(log_alpha.shape, generator=generator).to(log_alpha).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def gate_value(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic gate used after training: ``clamp(sigmoid(log alpha) (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z != 0)``, the expected L0 norm of one gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


class _Gates(nn.Module):
    """The gates of one channel group: their locations and the current draw."""

    def __init__(self, channels: int, device: torch.device | str) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((channels,), INITIAL_LOG_ALPHA, device=device))
        self.current = gate_value(self.log_alpha.detach())


class GatedRows(nn.Module):
    """Parametrization multiplying the rows ``positions`` of a parameter by their channels' current gates."""

    def __init__(self, gates: _Gates, positions: torch.Tensor, channels: torch.Tensor, rows: int) -> None:
        super().__init__()
        self.gates, self.positions, self.channels, self.rows = [gates], positions, channels, rows

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        gates = self.gates[0].current
        factor = torch.ones(self.rows, dtype=value.dtype, device=value.device)
        factor = factor.index_put((self.positions.to(value.device),), gates[self.channels.to(value.device)])
        return value * factor.reshape(-1, *([1] * (value.dim() - 1)))


def gate_outputs(model: nn.Module, group: CoupledChannels, gates: nn.Module) -> list[tuple[nn.Module, str]]:
    """Registers :class:`GatedRows` on every output slice of ``group``: each row times its channel's entry of
    ``gates.current`` (L0 gates, Bayesian compression's scales)."""
    done = []
    for part in group.slices:
        if not part.output:
            continue
        owner_name, _, attr = part.name.rpartition(".")
        owner = model.get_submodule(owner_name)
        rows = getattr(owner, attr).shape[0]
        parametrize.register_parametrization(owner, attr, GatedRows(gates, part.positions, part.channels, rows))
        done.append((owner, attr))
    return done


class L0Gates(LearnedMethod):
    """Hard-concrete L0 gates on channels; closed gates' channels removed."""

    structured: ClassVar[bool] = True
    description: ClassVar[str] = "L0 hard-concrete gates on channels (Louizos et al. 2017), closed channels removed"

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Trains weights and gate locations; folds the final gates into the weights."""
        model.to(target.device)
        gates = {g.leader: _Gates(g.channels, target.device) for g in target.groups}
        sizes = {g.leader: g.sizes().to(target.device) for g in target.groups}
        generator = torch.Generator().manual_seed(settings.seed)
        registered: list[tuple[nn.Module, str]] = []
        samples = sample_count(target.train) or 1

        def draw() -> None:
            for gate in gates.values():
                gate.current = gate_sample(gate.log_alpha, generator)

        def penalty(_: float) -> torch.Tensor:
            total = sum((sizes[name] * open_probability(g.log_alpha)).sum() for name, g in gates.items())
            return settings.strength * LAMBDA * total / samples

        try:
            for group in target.groups:
                registered += gate_outputs(model, group, gates[group.leader])
            extra = [([g.log_alpha for g in gates.values()], GATE_LR)]
            seconds = penalised_training(model, target, settings, penalty, extra=extra, before_step=draw)
            with torch.no_grad():
                for gate in gates.values():
                    gate.current = gate_value(gate.log_alpha)
        finally:
            for owner, attr in registered:  # fold the deterministic gates into the weights
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
            model.to("cpu")
        statistics = {name: gate_value(g.log_alpha.detach().cpu()) for name, g in gates.items()}
        params = parameters_of(model)
        for group in target.groups:  # exact zeros where a gate closed (folding left them at 0 * w = 0 already)
            group.scale(params, (statistics[group.leader] > 0).to(torch.float32), outputs_only=True)
        return Learned(seconds, statistics)
