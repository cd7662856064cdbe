"""The task's model after a learned-sparsity method's training, once per method and run, and the policies it floors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from core.errors import UsageError
from core.policy import MIN_KEEP, LayerChoice, Policy
from envs.tasks import Task
from envs.tasks.user import one_line
from methods.coupled_channels import CoupledChannels, coupled_channels
from methods.layer_kinds import weight_keys
from methods.learned import Learned, LearnedSettings, Target, check_learned, learn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedBase:
    """The task's model after one learned method's training."""

    model: nn.Module
    """The trained model (eval mode, CPU); its removed weights and channels are exactly zero."""
    outcome: Learned
    """Its training time and the method's statistics."""
    dead: dict[str, int]
    """Exactly-zero channels per group leader (structured pruning removes them)."""
    kept_weights: float
    """Fraction of the compressible weights left non-zero."""
    bits: dict[str, int]
    """Per layer, the bit width the method read from its posterior (``bayesian``; empty for the others)."""


class LearnedBases:
    """Trains the task's model with each learned method a policy names, once, and floors policies on the result."""

    def __init__(self, task: Task, layers: Sequence[str], leaders: Sequence[str],
                 compute: torch.device | str = "cpu") -> None:
        self.task = task
        self.layer_keys = {name: weight_keys(task.model, name) for name in layers}
        self.keys = tuple(key for keys in self.layer_keys.values() for key in keys)
        self.leaders = tuple(leaders)
        self.compute = compute
        self.settings = LearnedSettings()
        """The training every method runs (a run sets it from ``export.learned_*`` and its seed)."""
        self.progress = False
        """Show a progress bar while a method trains."""
        self._groups: list[CoupledChannels] | None = None
        self._bases: dict[tuple[str, LearnedSettings], LearnedBase] = {}

    @property
    def groups(self) -> list[CoupledChannels]:
        """The channel groups the structured methods may penalise and remove (traced once)."""
        if self._groups is None:
            self._groups = coupled_channels(self.task.model, self.task.input_shape, self.leaders)
        return self._groups

    def base(self, name: str) -> LearnedBase:
        """The model trained with method ``name`` under :attr:`settings` (trained on first use).

        Raises:
            ValueError: for an unknown method (``UnknownEntryError``).
            UsageError: when the method's training fails on this model.
        """
        check_learned(name)
        key = (name, self.settings)
        if key not in self._bases:
            groups = self.groups
            label = f"learned {name}" if self.progress else ""
            target = Target(self.keys, groups, self.task.train, self.task.loss, self.compute, label,
                            initial=self.task.initial)
            try:
                model, outcome = learn(self.task.model, name, target, self.settings)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a user's model can fail a method's training in many ways
                raise UsageError(f"learned method {name!r} cannot train this model ({one_line(exc)}); "
                                 "choose another method") from exc
            params = dict(model.named_parameters())
            dead = {g.leader: int(g.dead(params).sum()) for g in groups}
            total = sum(params[k].numel() for k in self.keys)
            kept = sum(int(torch.count_nonzero(params[k])) for k in self.keys) / max(1, total)
            self._bases[key] = LearnedBase(model, outcome, dead, kept, self._layer_bits(outcome))
            logger.info("learned %s: %.1f s, %.2f%% of the weights kept, %d channels removed", name,
                        outcome.seconds, 100 * kept, sum(dead.values()))
        return self._bases[key]

    def _layer_bits(self, outcome: Learned) -> dict[str, int]:
        """Each layer's bit width from the method's per-weight ``bits:KEY`` statistics (the widest of its weights)."""
        bits: dict[str, int] = {}
        for name, keys in self.layer_keys.items():
            found = [int(outcome.statistics[f"bits:{k}"]) for k in keys if f"bits:{k}" in outcome.statistics]
            if found:
                bits[name] = max(found)
        return bits

    @property
    def trained(self) -> dict[str, LearnedBase]:
        """Every base trained so far, by method name."""
        return {name: base for (name, _), base in self._bases.items()}

    def floored(self, policy: Policy) -> Policy:
        """``policy`` with each group leader's keep at most the fraction of its channels the method left alive, and
        each layer it leaves at fp32 at the bit width the method read, if it reads one (linear codes)."""
        if policy.learned is None:
            return policy
        base, groups = self.base(policy.learned), {g.leader: g.channels for g in self.groups}
        choices = policy.choices
        for name, bits in base.bits.items():
            choice = choices.get(name, LayerChoice())
            if not choice.quantized:
                choices[name] = replace(choice, bits=bits, quantizer="linear")
        for leader, dead in base.dead.items():
            if dead:
                alive = max(MIN_KEEP, (groups[leader] - dead) / groups[leader])
                choice = choices.get(leader, LayerChoice())
                choices[leader] = replace(choice, keep=min(choice.keep, alive))
        return Policy.from_choices(choices, policy.saliency, policy.channel_importance, policy.runtime, policy.learned)
