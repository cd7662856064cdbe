"""A gymnasium environment that compresses a network one layer per step (AMC / HAQ style).

Each step decides one compressible layer: the action (``Box(-1, 1)``, one entry per decision of
the mode) is read as compression levels in [0, 1] and snapped to the search space's grids. The
terminal step evaluates the assembled :class:`~core.policy.Policy` (with the Evaluator, or an
external ``evaluate`` callable such as the runner's) and returns the terminal reward; the other
steps return 0. With a cost model, :func:`~search.searchers.rl.budget_wall.apply_wall` clamps every action so that
the episode stays within budget.

When the space searches the runtime (one choice for the whole network), the action has one more entry,
read at the first step only (AMC-style global decision): its level picks a runtime, the runtimes ordered
from slowest to fastest on the most compressed network; the wall first moves it toward faster runtimes
until the rest of the episode can meet the latency limit on it, and every later step is walled with that
runtime's latency curve.

The observation (``Box(0, 1)``) is AMC/HAQ's layer embedding (index, kind, in/out channels, kernel,
stride, input size, share of the parameters and MACs, leader flag), then the fraction of parameters
and MACs reduced so far, the fraction remaining, the headroom to this episode's size and latency
limits, the episode's sampled targets, the previous (walled) action as levels, and, when the runtime is
searched, the chosen runtime as a level (0 before it is chosen).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from core.budget import Budget, parse_latency, parse_size
from core.policy import LayerChoice, Policy
from core.result import Result
from core.space import SearchSpace, SpaceSettings
from core.spec import LAYER_SPEC_KINDS
from search.searchers.rl.budget_wall import CostModel, Limits, apply_wall, clamp_levels
from search.searchers.rl.calibration import LatencyPoints, WallEvaluator, calibrate
from search.searchers.rl.rewards import Reference, check_reward, terminal_reward

MODES = ("prune", "bits", "joint")
"""``prune``: sparsity + channel keep ratio (AMC); ``bits``: bit width and quantizer (HAQ); ``joint``: all."""
SAMPLINGS = ("fixed", "random")
"""How each episode's own limits are set (see :attr:`EnvSettings.budget_sampling`)."""
DIMENSIONS = ("sparsity", "bits", "quantizer", "keep")
"""Possible action entries, in action order."""
KINDS = LAYER_SPEC_KINDS
"""Layer kinds, one-hot in the observation."""
STATIC_FEATURES = 9 + len(KINDS)
"""Per-layer observation entries that do not change during an episode: position, kind (one-hot), in and out
channels, kernel, stride, input size, share of parameters, share of MACs, group leader."""
DYNAMIC_FEATURES = 7
"""Observation entries that follow the episode (before the previous action)."""


@dataclass(frozen=True)
class EnvSettings:
    """How the environment maps actions to a policy and results to a reward."""

    mode: str = "joint"
    """``prune``, ``bits`` or ``joint`` (see :data:`MODES`)."""
    reward: str = "error"
    """Terminal reward, a key of :data:`~search.searchers.rl.rewards.REWARDS`."""
    macs_fraction: float | None = None
    """MACs budget as a fraction of the original MACs (``prune`` mode; AMC's protocol)."""
    latency_margin: float = 0.1
    """Relative safety margin of the latency prediction."""
    latency_probes: int = 4
    """Uniform keep ratios timed to calibrate the latency model."""
    budget_sampling: str = "fixed"
    """``fixed``: episodes target the budget; ``random``: each draws a tighter size/latency target."""
    wall: bool = True
    """Clamp actions to keep every episode within budget (needs an evaluator to calibrate)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_reward(self.reward)
        if self.macs_fraction is not None and not (0.0 < self.macs_fraction <= 1.0 and self.mode == "prune"):
            raise ValueError("macs_fraction must be in (0, 1] and needs mode 'prune'")
        if self.latency_margin < 0 or self.latency_probes < 2:
            raise ValueError("latency_margin must be >= 0 and latency_probes >= 2")
        if self.budget_sampling not in SAMPLINGS:
            raise ValueError(f"budget_sampling must be one of {SAMPLINGS}, got {self.budget_sampling!r}")


class EnvEvaluator(WallEvaluator, Protocol):
    """What the environment uses of :class:`envs.evaluator.Evaluator`: the wall's calibration, and these."""

    @property
    def layer_names(self) -> list[str]:
        """Compressible layers in execution order."""

    @property
    def leaders(self) -> list[str]:
        """Channel-group leaders."""

    def evaluate(self, policy: Policy) -> Result:
        """Compresses and measures one candidate."""


def _pick(values: Sequence[Any], level: float) -> Any:
    """Equal-width bins of [0, 1] over ``values`` (least compression first)."""
    return values[min(int(level * len(values)), len(values) - 1)]


@dataclass(frozen=True)
class ActionGrid:
    """Maps per-dimension compression levels in [0, 1] (0 = none, 1 = most) to a choice on the grids."""

    dims: tuple[str, ...]
    """The decisions of the action, in order."""
    sparsities: tuple[float, ...]
    """Sparsity grid, ascending."""
    bits: tuple[int, ...]
    """Bit widths, most bits first."""
    keeps: tuple[float, ...]
    """Keep ratios, 1.0 first."""
    quantizers: tuple[str, ...] = ("linear",)
    """Quantizers of coded weights, in the space's order (a level picks one like any grid)."""

    @classmethod
    def from_space(cls, space: SearchSpace, mode: str) -> ActionGrid:
        """The grids ``space`` allows in ``mode`` (the same values the other searchers sample).

        Raises:
            ValueError: when the mode has nothing to decide in this space.
        """
        s = space.settings
        steps = math.floor(s.sparsity_max / s.sparsity_step + 1e-9)
        sparsities = tuple(round(i * s.sparsity_step, 6) for i in range(steps + 1)) if mode != "bits" else (0.0,)
        bits = tuple(sorted(s.bits, reverse=True)) if mode != "prune" else (max(s.bits),)
        keeps = s.keeps() if mode != "bits" and space.searches_keep else (1.0,)
        quantizers = tuple(s.quantizers) if mode != "prune" else tuple(s.quantizers[:1])
        grids = (sparsities, bits, quantizers, keeps)
        dims = tuple(d for d, v in zip(DIMENSIONS, grids, strict=True) if len(v) > 1)
        if not dims:
            raise ValueError(f"mode {mode!r} has nothing to decide in this search space")
        return cls(dims, sparsities, bits, keeps, quantizers)

    def choice(self, levels: np.ndarray, leader: bool) -> LayerChoice:
        """The layer choice at ``levels`` (non-leaders keep every channel)."""
        level = dict(zip(self.dims, (float(v) for v in levels), strict=True))
        return LayerChoice(
            sparsity=_pick(self.sparsities, level.get("sparsity", 0.0)),
            bits=_pick(self.bits, level.get("bits", 0.0)),
            keep=_pick(self.keeps, level.get("keep", 0.0)) if leader else 1.0,
            quantizer=_pick(self.quantizers, level.get("quantizer", 0.0)),
        )

    def levels_of(self, choice: LayerChoice, leader: bool) -> np.ndarray:
        """Levels at the centre of the bins of ``choice`` (inverse of :meth:`choice`)."""
        values = {"sparsity": (self.sparsities, choice.sparsity), "bits": (self.bits, choice.bits),
                  "quantizer": (range(len(self.quantizers)), self.quantizers.index(choice.quantizer)
                                if choice.quantizer in self.quantizers else 0),
                  "keep": (self.keeps, choice.keep if leader else 1.0)}
        levels = []
        for dim in self.dims:
            grid, value = values[dim]
            nearest = min(range(len(grid)), key=lambda i: abs(grid[i] - value))
            levels.append((nearest + 0.5) / len(grid))
        return np.array(levels)

    def speed_dims(self, leader: bool) -> np.ndarray:
        """Which action entries change latency and MACs for this layer."""
        return np.array([d == "keep" and leader for d in self.dims], dtype=bool)


def _static_features(space: SearchSpace) -> np.ndarray:
    """AMC/HAQ layer embedding, each column scaled to [0, 1] (zeros where the space has no specs)."""
    n = len(space.layers)
    table = np.zeros((n, STATIC_FEATURES), dtype=np.float64)
    first = 1 + len(KINDS)  # after position and the kind one-hot
    table[:, 0] = np.arange(n) / max(n - 1, 1)
    table[:, first + 7] = [name in space.leaders for name in space.layers]
    if not space.specs:
        return table
    specs = space.specs
    for i, spec in enumerate(specs):
        table[i, 1 + KINDS.index(spec.kind)] = 1.0
    raw = np.array([[s.in_channels, s.out_channels, s.kernel, s.stride, s.input_hw] for s in specs], dtype=np.float64)
    table[:, first : first + 5] = raw / np.maximum(raw.max(axis=0), 1.0)
    table[:, first + 5] = [s.params for s in specs] / np.float64(max(sum(s.params for s in specs), 1))
    table[:, first + 6] = [s.macs for s in specs] / np.float64(max(sum(s.macs for s in specs), 1))
    return table


class CompressEnv(gym.Env):
    """One step per compressible layer; the terminal step evaluates the policy.

    Build it with ``gymnasium.make("Compress-v0", task="lenet5", budget_mb=0.04, ...)`` (after
    ``import search.searchers.rl``, which registers it), or from an existing ``evaluator`` / ``space`` /
    ``budget``; ``evaluate`` replaces the Evaluator for the terminal evaluation (e.g. to route it through
    the search runner).
    Without an evaluator there is no cost model: no wall, no headroom features.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: str | None = None,
        budget_mb: str | float | None = None,
        target_latency_ms: str | float | None = None,
        mode: str = "joint",
        reward: str = "error",
        *,
        device: Any = "cpu-b32",
        macs_fraction: float | None = None,
        budget_sampling: str = "fixed",
        space_settings: SpaceSettings | None = None,
        settings: EnvSettings | None = None,
        evaluator: EnvEvaluator | None = None,
        space: SearchSpace | None = None,
        budget: Budget | None = None,
        evaluate: Callable[[Policy], Result] | None = None,
        cost_model: CostModel | None = None,
        latency_points: LatencyPoints | None = None,
    ):
        """Args: see the class docstring; ``settings`` replaces ``mode``, ``reward``, ``macs_fraction``
        and ``budget_sampling``; ``device`` is a profile name or a DeviceProfile; ``cost_model`` skips calibration.
        """
        self.settings = settings or EnvSettings(mode, reward, macs_fraction, budget_sampling=budget_sampling)
        self._runtime: str | None = None
        if evaluator is None and task is not None:
            from envs.device import load_device
            from envs.evaluator import Evaluator
            from envs.tasks import load_task

            evaluator = Evaluator(load_task(task), load_device(device) if isinstance(device, str) else device)
        if space is None and evaluator is None:
            raise ValueError("CompressEnv needs a task, an evaluator or a search space")
        if evaluate is None and evaluator is None:
            raise ValueError("CompressEnv needs an evaluator or an evaluate callable")
        self.evaluator = evaluator
        self.space = space or SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders),
                                          space_settings or SpaceSettings(), tuple(evaluator.layers),
                                          tuple(evaluator.device.runtimes))
        self.budget = budget or Budget(None if budget_mb is None else parse_size(budget_mb),
                                       None if target_latency_ms is None else parse_latency(target_latency_ms))
        self._evaluate = evaluate or evaluator.evaluate
        self.grid = ActionGrid.from_space(self.space, self.settings.mode)
        self.runtimes = self.space.runtimes if self.space.searches_runtime else ()
        """The runtimes the first step chooses among, slowest first once the wall is calibrated (empty: the
        runtime is not searched)."""
        self.leaders = [name in self.space.leaders for name in self.space.layers]
        self.most = [self.grid.choice(np.ones(len(self.grid.dims)), leader) for leader in self.leaders]
        original_macs = sum(spec.macs for spec in self.space.specs)
        fraction = self.settings.macs_fraction
        self.limits = Limits(self.budget.size_bytes, self.budget.latency_ms,
                             None if fraction is None else fraction * original_macs)
        self.cost_model = cost_model
        if cost_model is None and self.settings.wall and evaluator is not None and not self.limits.empty:
            self.cost_model = self._calibrate(latency_points)
        self.cost_models = {} if self.cost_model is None else {r: self.cost_model.on(r) for r in self.runtimes}
        """The cost model of each runtime (each predicts latency with its runtime's curve)."""
        if self.cost_models:
            self.runtimes = tuple(sorted(self.runtimes, key=lambda r: -self.cost_models[r].costs(self.most).latency_ms))
        self._reference = Reference(macs=original_macs)
        self._reference_done = self.settings.reward != "relative_accuracy" or evaluator is None
        self._static = _static_features(self.space)
        self._weights = np.array([s.params for s in self.space.specs] or [1] * len(self.space.layers), np.float64)
        self._macs = np.array([s.macs for s in self.space.specs] or [1] * len(self.space.layers), np.float64)
        extra = 1 if self.runtimes else 0
        size = STATIC_FEATURES + DYNAMIC_FEATURES + len(self.grid.dims) + extra
        self.observation_space = gym.spaces.Box(0.0, 1.0, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(self.grid.dims) + extra,), np.float32)
        self._choices: list[LayerChoice] = []
        self._levels = np.zeros(len(self.grid.dims))
        self._episode = self.limits
        self._targets = (1.0, 1.0)

    # --- construction helpers -------------------------------------------------------

    def _calibrate(self, latency_points: Sequence[Sequence[float]] | None) -> CostModel:
        keeps: tuple[float, ...] = ()
        if "keep" in self.grid.dims:
            picks = np.linspace(0, len(self.grid.keeps) - 1, min(self.settings.latency_probes, len(self.grid.keeps)))
            keeps = tuple(self.grid.keeps[int(round(i))] for i in picks)
        margin = self.settings.latency_margin if self.limits.latency_ms is not None else None
        longest = max(self.runtimes, key=len) if self.runtimes else None  # the header names the runtime
        return calibrate(self.evaluator, [self.policy_of(self.most, longest)], keeps, margin, latency_points,
                         self.runtimes)

    def policy_of(self, choices: Sequence[LayerChoice], runtime: str | None = None) -> Policy:
        """The policy of one choice per layer (episode order) on ``runtime`` (default: the episode's)."""
        choices_by_layer = dict(zip(self.space.layers, choices, strict=True))
        settings = self.space.settings
        return Policy.from_choices(choices_by_layer, settings.saliencies[0], settings.channel_importances[0],
                                   runtime or self._runtime)

    def latency_points(self) -> list | dict | None:
        """The wall's latency calibration as JSON-ready ``(macs, ms)`` points (per runtime when the runtime is
        searched), for :func:`calibrate`'s ``latency_points`` on resume; ``None`` without a latency curve."""
        if self.cost_model is None or self.cost_model.latency is None:
            return None

        def rows(curve: Any) -> list:
            return [list(p) for p in zip(curve.macs, curve.ms, strict=True)]

        if self.cost_model.latencies:
            return {runtime: rows(curve) for runtime, curve in self.cost_model.latencies}
        return rows(self.cost_model.latency)

    def action_of(self, policy: Policy, layer: str) -> np.ndarray:
        """The action that plays ``policy``'s choice of ``layer`` (and, at the first layer, its runtime)."""
        index = self.space.layers.index(layer)
        levels = self.grid.levels_of(policy[layer], self.leaders[index])
        if self.runtimes:
            runtime = policy.runtime if policy.runtime in self.runtimes else self.space.runtimes[0]
            levels = np.append(levels, (self.runtimes.index(runtime) + 0.5) / len(self.runtimes))
        return 2 * levels - 1

    @property
    def episode_model(self) -> CostModel | None:
        """The cost model of the episode's runtime (the default's before the first step chooses it)."""
        return self.cost_models.get(self._runtime or "", self.cost_model)

    @property
    def reference(self) -> Reference:
        """The uncompressed model, for the reward (its accuracy is measured once, when needed)."""
        if not self._reference_done:
            score = self.evaluator.evaluate(Policy()).val_accuracy
            score = score if abs(score) >= 1e-6 else 1e-6  # a chance-level model of zero accuracy
            self._reference = Reference(accuracy=score, macs=self._reference.macs)
            self._reference_done = True
        return self._reference

    # --- episode ----------------------------------------------------------------------

    def _draw_limits(self) -> None:
        """This episode's limits: the budget, or with ``random`` sampling a tighter target per episode."""
        self._episode, self._targets = self.limits, (1.0, 1.0)
        if self.settings.budget_sampling != "random" or self.cost_model is None:
            return
        low = self.cost_model.costs(self.most)
        high = self.cost_model.costs([LayerChoice()] * len(self.most))
        u = self.np_random.uniform(size=2)
        top = max(self.limits.size_bytes or high.size_bytes, low.size_bytes)
        size = low.size_bytes * (top / low.size_bytes) ** u[0]
        latency = self.limits.latency_ms
        fastest = min(m.costs(self.most).latency_ms for m in [self.cost_model, *self.cost_models.values()])
        if self.cost_model.latency is not None and latency is not None and fastest < latency:
            latency = fastest * (latency / fastest) ** u[1]
        self._episode = Limits(size, latency, self.limits.macs)
        self._targets = (float(u[0]), float(u[1]) if latency is not None else 1.0)

    def _observation(self) -> np.ndarray:
        n, t = len(self.space.layers), len(self._choices)
        if t >= n:
            return np.zeros(self.observation_space.shape, np.float32)
        retained = np.array([(1 - c.sparsity) * (c.bits / 32) * c.keep for c in self._choices])
        reduced = float(np.dot(self._weights[:t], 1 - retained)) / self._weights.sum()
        rest = float(self._weights[t + 1 :].sum()) / self._weights.sum()
        reduced_macs = float(np.dot(self._macs[:t], [1 - c.keep for c in self._choices])) / self._macs.sum()
        headroom = [0.0, 0.0]
        model = self.episode_model
        if model is not None:
            now = model.costs([*self._choices, *self.most[t:]])
            high = model.costs([*self._choices, *[LayerChoice()] * (n - t)])
            pairs = ((now.size_bytes, high.size_bytes, self._episode.size_bytes),
                     (now.latency_ms, high.latency_ms, self._episode.latency_ms))
            headroom = [0.0 if limit is None else (limit - least) / max(most - least, 1e-9)
                        for least, most, limit in pairs]
        dynamic = [reduced, rest, reduced_macs, *headroom, *self._targets]
        chosen = [] if not self.runtimes else [
            0.0 if self._runtime is None else (self.runtimes.index(self._runtime) + 0.5) / len(self.runtimes)
        ]
        obs = np.concatenate([self._static[t], dynamic, self._levels, chosen])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Starts an episode at the first layer (``options`` is unused)."""
        super().reset(seed=seed)
        self._choices, self._levels, self._runtime = [], np.zeros(len(self.grid.dims)), None
        self._draw_limits()
        return self._observation(), {"limits": self._episode}

    def decide(self, action: np.ndarray) -> tuple[np.ndarray, LayerChoice, str | None]:
        """The walled levels, the choice ``action`` gives the current layer, and the episode's runtime (chosen
        by the first step's last entry when the runtime is searched); no state change."""
        t = len(self._choices)
        if t >= len(self.space.layers):
            raise RuntimeError("the episode is over; call reset()")
        levels = (np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0) + 1.0) / 2.0
        runtime = self._runtime
        if self.runtimes and t == 0:
            levels[-1] = self._wall_runtime(levels[-1])
            runtime = _pick(self.runtimes, levels[-1])
        layer = levels[: len(self.grid.dims)]
        decode = partial(self.grid.choice, leader=self.leaders[t])
        model = self.cost_models.get(runtime or "", self.cost_model)
        if model is not None:
            layer = apply_wall(layer, t, self._choices, decode, self.most, model, self._episode,
                               self.grid.speed_dims(self.leaders[t]))
        return np.concatenate([layer, levels[len(self.grid.dims):]]), decode(layer), runtime

    def _wall_runtime(self, level: float) -> float:
        """The first step's runtime level moved toward faster runtimes until the most compressed rest of the
        episode meets the speed limits on the runtime it picks (the end, the fastest, when none does)."""
        if not self.cost_models or self._episode.speed_only.empty:
            return level

        def fits(levels: np.ndarray) -> bool:
            model = self.cost_models[_pick(self.runtimes, float(levels[0]))]
            return model.costs(self.most).fits(self._episode.speed_only)

        return float(clamp_levels(np.array([level]), np.array([True]), fits)[0])

    def preview(self, action: np.ndarray) -> Policy:
        """The policy the final step would evaluate with ``action`` (only at the last layer)."""
        if len(self._choices) != len(self.space.layers) - 1:
            raise RuntimeError("preview is only defined at the last layer")
        _, choice, runtime = self.decide(action)
        return self.policy_of([*self._choices, choice], runtime)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decides the current layer; the last layer's step evaluates the policy and returns the reward."""
        levels, choice, self._runtime = self.decide(action)
        name = self.space.layers[len(self._choices)]
        self._choices.append(choice)
        self._levels = levels[: len(self.grid.dims)]
        info: dict[str, Any] = {"layer": name, "choice": choice, "action": (2 * levels - 1).astype(np.float32)}
        if len(self._choices) < len(self.space.layers):
            return self._observation(), 0.0, False, False, info
        policy = self.policy_of(self._choices)
        result = self._evaluate(policy)
        excess = sum(max(0.0, v) for v in self.budget.violations(result.size_bytes, result.latency_ms))
        if result.ok and self.limits.macs is not None:
            excess += max(0.0, result.macs / self.limits.macs - 1.0)
        reward = terminal_reward(self.settings.reward, result, self.reference, excess)
        info.update(policy=policy, result=result, feasible=result.ok and excess == 0.0,
                    val_accuracy=result.val_accuracy, size_bytes=result.size_bytes,
                    latency_ms=result.latency_ms, macs=result.macs)
        if self.episode_model is not None:
            info["predicted"] = self.episode_model.costs(self._choices)
        return self._observation(), float(reward), True, False, info
