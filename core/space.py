"""The per-layer search space, shared by every searcher (leaf module)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from core.policy import (
    FP32_BITS,
    MAX_SPARSITY,
    MIN_KEEP,
    LayerChoice,
    Policy,
    check_criterion_name,
)
from core.spec import LayerSpec


class Suggest(Protocol):
    """Where a searcher's decisions come from (an Optuna trial, a random generator, ...)."""

    def float(self, name: str, low: float, high: float, step: float) -> float:
        """A value on the grid ``low, low + step, ..., high``."""

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """One of ``choices``."""


@dataclass(frozen=True)
class SpaceSettings:
    """Which choices the searchers may make for each layer."""

    sparsity_max: float = 0.95
    """Largest fine-grained sparsity per layer."""
    sparsity_step: float = 0.05
    """Grid step of the sparsity choice."""
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8, FP32_BITS)
    """Allowed weight code widths (32 = fp32)."""
    quantizers: tuple[str, ...] = ("linear",)
    """Allowed quantizers for coded weights, registered in ``methods/quantizers/`` (``linear``, ``kmeans``, ...)."""
    channel_pruning: bool = True
    """Whether structured channel keep ratios are searched."""
    keep_min: float = 0.25
    """Smallest kept fraction of a channel group."""
    keep_step: float = 0.125
    """Grid step of the keep ratio."""
    ranks: tuple[float, ...] = (1.0,)
    """Allowed low-rank fractions of a layer's full rank (1 = not factorised); searched when more than one."""
    saliencies: tuple[str, ...] = ("magnitude",)
    """Allowed fine-grained pruning criteria (one per policy): names in ``methods.saliency.SALIENCIES``."""
    channel_importances: tuple[str, ...] = ("l1",)
    """Allowed structured pruning criteria (one per policy): names in
    ``methods.channel_importance.CHANNEL_IMPORTANCES``."""
    latency_fill: float = 0.0
    """With a latency target and searched keep ratios: when > 0, each proposed policy's keep ratios are scaled
    together (their proportions kept, on the keep grid) to the widest the latency model predicts within this
    fraction of the target (``search/latency_fill.py``); 0 leaves proposals as they are. The RL agent bounds
    its own actions (AMC's budget wall) and is not filled."""

    budget_repair: bool = True
    """A proposal outside the budget is moved just inside it before it is evaluated (``search/budget_repair.py``):
    keep ratios scaled together to the latency target, kept fractions to the size budget. Not for the RL
    agent (its budget wall bounds its actions) or the Ray sweep."""
    uniform_seeds: bool = True
    """Every searcher first evaluates the uniform policies scaled to the budget (``search/seeds.py``): 8 and
    4 bits, the widest uniform width within the latency target, the least uniform sparsity within the size
    budget; so a search never returns less than a uniform policy would."""
    learned_seed: bool = True
    """With ``export.learned`` (and the uniform seeds), the searchers also start from what that method learned:
    its per-layer sparsity, kept channels and bits, naming the method (``search/seeds.py``)."""

    def __post_init__(self) -> None:
        for flag in ("uniform_seeds", "budget_repair", "learned_seed"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        object.__setattr__(self, "ranks", tuple(sorted({round(float(r), 6) for r in self.ranks})))
        if not self.ranks or any(not 0.0 < r <= 1.0 for r in self.ranks):
            raise ValueError(f"ranks must be a non-empty set of fractions in (0, 1], got {self.ranks}")
        for field_name in ("saliencies", "channel_importances"):
            given = getattr(self, field_name)
            names = () if isinstance(given, str) else tuple(dict.fromkeys(given))
            if not names:
                raise ValueError(f"{field_name} must be a non-empty sequence of criterion names, got {given!r}")
            for name in names:
                check_criterion_name(field_name, name)
            object.__setattr__(self, field_name, names)
        object.__setattr__(self, "bits", tuple(sorted({int(b) for b in self.bits})))
        if not self.bits or any(not (1 <= b <= 8 or b == FP32_BITS) for b in self.bits):
            raise ValueError(f"bits must be a non-empty subset of 1-8 and {FP32_BITS}, got {self.bits}")
        object.__setattr__(self, "quantizers", tuple(dict.fromkeys(self.quantizers)))
        if not self.quantizers or any(not isinstance(q, str) or not q for q in self.quantizers):
            raise ValueError(f"quantizers must be a non-empty list of quantizer names, got {self.quantizers}")
        if not 0.0 <= self.sparsity_max <= MAX_SPARSITY:
            raise ValueError(f"sparsity_max must be in [0, {MAX_SPARSITY}]")
        if not 0.0 < self.sparsity_step <= 1.0:
            raise ValueError("sparsity_step must be in (0, 1]")
        if not MIN_KEEP <= self.keep_min <= 1.0:
            raise ValueError(f"keep_min must be in [{MIN_KEEP}, 1]")
        if not 0.0 < self.keep_step <= 1.0:
            raise ValueError("keep_step must be in (0, 1]")
        if not 0.0 <= self.latency_fill <= 1.0:
            raise ValueError("latency_fill must be in [0, 1] (0 = off)")

    def keeps(self) -> tuple[float, ...]:
        """The keep ratios on the grid, from 1 down by ``keep_step`` to no less than ``keep_min``."""
        n = math.floor((1.0 - self.keep_min) / self.keep_step + 1e-9)
        return tuple(round(1.0 - i * self.keep_step, 6) for i in range(n + 1))


@dataclass(frozen=True)
class SearchSpace:
    """Per-layer choices over a task's compressible layers."""

    layers: tuple[str, ...]
    """Compressible layers (Conv2d/Linear module names) in execution order."""
    leaders: tuple[str, ...] = ()
    """Channel-group leaders: layers that get a keep ratio."""
    settings: SpaceSettings = field(default_factory=SpaceSettings)
    """Bounds and grids."""
    specs: tuple[LayerSpec, ...] = ()
    """Shapes and costs of ``layers`` (same order), for searchers that model the network."""
    runtimes: tuple[str, ...] = ()
    """Runtimes a candidate may run on, the device profile's default first (``DeviceProfile.runtimes``);
    searched as one choice per policy when there are several, else policies leave ``runtime`` unset."""

    def __post_init__(self) -> None:
        names = () if isinstance(self.runtimes, str) else tuple(dict.fromkeys(self.runtimes))
        for name in names:
            check_criterion_name("runtimes", name)
        object.__setattr__(self, "runtimes", names)

    @property
    def searches_runtime(self) -> bool:
        """True when the runtime is part of the space (more than one allowed)."""
        return len(self.runtimes) > 1

    def _sparsity_grid(self) -> tuple[float, float, float]:
        step = self.settings.sparsity_step
        high = math.floor(self.settings.sparsity_max / step + 1e-9) * step
        return 0.0, round(high, 6), step

    def snap_keep(self, keep: float) -> float:
        """The largest keep-grid value not above ``keep`` (the grid's smallest for anything below it)."""
        low, high, step = self.keep_grid()
        if keep >= high:
            return high
        return round(low + max(0, math.floor((keep - low) / step + 1e-9)) * step, 6)

    def scaled_keeps(self, policy: Policy, alpha: float) -> Policy:
        """``policy`` with every leader's keep ratio multiplied by ``alpha``, snapped down to the keep grid."""
        choices = policy.choices
        for name in self.leaders:
            choice = policy[name]
            choices[name] = replace(choice, keep=self.snap_keep(min(1.0, choice.keep * alpha)))
        return Policy.from_choices(choices, policy.saliency, policy.channel_importance, policy.runtime,
                                   policy.learned)

    def scaled_density(self, policy: Policy, beta: float) -> Policy:
        """``policy`` with every layer's kept fraction ``1 - sparsity`` multiplied by ``beta`` (< 1), the sparsity
        rounded up to its grid and clipped to ``sparsity_max``."""
        low, high, step = self._sparsity_grid()
        choices = policy.choices
        for name in self.layers:
            choice = policy[name]
            wanted = 1.0 - (1.0 - choice.sparsity) * beta
            sparsity = min(high, low + math.ceil((wanted - low) / step - 1e-9) * step)
            choices[name] = replace(choice, sparsity=round(max(choice.sparsity, sparsity), 6))
        return Policy.from_choices(choices, policy.saliency, policy.channel_importance, policy.runtime,
                                   policy.learned)

    def keep_grid(self) -> tuple[float, float, float]:
        """Smallest keep ratio, largest (1) and step of the keep grid."""
        return self.settings.keeps()[-1], 1.0, self.settings.keep_step

    @property
    def searches_keep(self) -> bool:
        """True when channel keep ratios are part of the space."""
        return self.settings.channel_pruning and bool(self.leaders)

    def _rank_layers(self) -> set[str]:
        """Layers with a rank choice: all of them unless their specs say they are not factorisable."""
        if len(self.settings.ranks) < 2:
            return set()
        if not self.specs:
            return set(self.layers)
        return {spec.name for spec in self.specs if spec.factorisable and spec.groups == 1}

    def sample(self, suggest: Suggest) -> Policy:
        """Builds a policy from one suggestion per decision (the runtime first, when it is searched)."""
        runtime = suggest.categorical("runtime", self.runtimes) if self.searches_runtime else None
        low, high, step = self._sparsity_grid()
        saliency = self.settings.saliencies[0]
        if len(self.settings.saliencies) > 1:
            saliency = suggest.categorical("saliency", self.settings.saliencies)
        importance = self.settings.channel_importances[0]
        if self.searches_keep and len(self.settings.channel_importances) > 1:
            importance = suggest.categorical("channel_importance", self.settings.channel_importances)
        rank_layers = self._rank_layers()
        choices = {}
        for name in self.layers:
            sparsity = suggest.float(f"{name}.sparsity", low, high, step) if high > 0 else 0.0
            bits = suggest.categorical(f"{name}.bits", self.settings.bits)
            quantizer = self.settings.quantizers[0]
            if len(self.settings.quantizers) > 1:
                quantizer = suggest.categorical(f"{name}.quantizer", self.settings.quantizers)
            keep = 1.0
            if self.searches_keep and name in self.leaders:
                keep = suggest.float(f"{name}.keep", *self.keep_grid())
            rank = suggest.categorical(f"{name}.rank", self.settings.ranks) if name in rank_layers else 1.0
            choices[name] = LayerChoice(sparsity=sparsity, bits=bits, keep=keep, quantizer=quantizer, rank=rank)
        return Policy.from_choices(choices, saliency, importance, runtime)

    def most_compressed(self, quantizer: str | None = None, runtime: str | None = None) -> Policy:
        """The policy with the highest sparsity, fewest bits and fewest channels the space allows.

        Args:
            quantizer: the quantizer of every layer (default: the first allowed one).
            runtime: the runtime (default: the first allowed one when the runtime is searched, else unset);
                which runtime is fastest depends on the machine (``search/reachability.py`` times them all).
        """
        if runtime is None and self.searches_runtime:
            runtime = self.runtimes[0]
        keep = self.keep_grid()[0] if self.searches_keep else 1.0
        sparsity = self._sparsity_grid()[1]
        rank_layers = self._rank_layers()
        return Policy.from_choices(
            {
                name: LayerChoice(
                    sparsity=sparsity,
                    bits=min(self.settings.bits),
                    keep=keep if name in self.leaders else 1.0,
                    quantizer=quantizer or self.settings.quantizers[0],
                    rank=min(self.settings.ranks) if name in rank_layers else 1.0,
                )
                for name in self.layers
            },
            self.settings.saliencies[0],
            self.settings.channel_importances[0],
            runtime,
        )

    def params(self, policy: Policy) -> dict[str, float | int | str]:
        """The suggestion values that :meth:`sample` would need to produce ``policy``."""
        values: dict[str, float | int | str] = {}
        if self.searches_runtime:
            values["runtime"] = policy.runtime or self.runtimes[0]
        if len(self.settings.saliencies) > 1:
            values["saliency"] = policy.saliency
        if self.searches_keep and len(self.settings.channel_importances) > 1:
            values["channel_importance"] = policy.channel_importance
        rank_layers = self._rank_layers()
        for name in self.layers:
            choice = policy[name]
            if self._sparsity_grid()[1] > 0:
                values[f"{name}.sparsity"] = choice.sparsity
            values[f"{name}.bits"] = choice.bits
            if len(self.settings.quantizers) > 1:
                values[f"{name}.quantizer"] = choice.quantizer
            if self.searches_keep and name in self.leaders:
                values[f"{name}.keep"] = choice.keep
            if name in rank_layers:
                values[f"{name}.rank"] = choice.rank
        return values
