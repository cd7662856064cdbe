"""AMC/HAQ-style reinforcement-learning searcher: an SB3 agent walks the network layer by layer.

The agent is driven by hand rather than through ``learn()``, so that it fits the runner's ask/tell
loop without a thread: :meth:`RLSearcher.ask` plays one episode of :class:`~search.searchers.rl.environment.CompressEnv`
up to the last layer and hands out the policy the final step would evaluate; :meth:`RLSearcher.tell`
plays that final step with the runner's result, stores the episode in SB3's replay buffer (AMC: every
step gets the terminal reward minus a moving-average baseline, gamma 1) and runs SB3's ``train()``.
Warm-up episodes act uniformly at random; afterwards DDPG/TD3 add truncated Gaussian noise whose
scale decays per episode (SAC samples its own stochastic policy).

Everything random runs on private streams (a numpy Generator for actions and noise, and a saved
torch/numpy global state for SB3), so a fixed seed gives the same episodes whatever else the process
does, and :meth:`RLSearcher.restore` replays the archive through ask/tell (re-training on the way) to
continue bit-exactly. That needs the same options, seed, libraries and CPU float behaviour, and the same
wall: the latency calibration is therefore kept in the run folder rather than re-timed on resume.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.logger import Logger

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from core.space import SearchSpace
from search.searchers.base import Finished, Proposal, Searcher
from search.searchers.rl.environment import CompressEnv, EnvSettings
from search.searchers.rl.rewards import check_metric, check_reward

ALGOS: dict[str, type] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}
"""SB3 off-policy algorithms by name."""
LATENCY_FILE = "rl_latency.json"
"""Latency calibration kept in the run folder, so that a resumed run walls exactly as before."""


@dataclass(frozen=True)
class RLOptions:
    """Settings of the RL searcher (``searcher_options`` in the config)."""

    algo: str = "ddpg"
    """SB3 algorithm: ``ddpg`` (AMC), ``td3`` or ``sac``."""
    mode: str = "joint"
    """What each step decides: ``prune``, ``bits`` or ``joint`` (see search.searchers.rl.environment.MODES)."""
    reward: str = "error"
    """Terminal reward, a key of search.searchers.rl.rewards.REWARDS."""
    macs_fraction: float | None = None
    """MACs budget as a fraction of the original (``prune`` mode; AMC's protocol)."""
    budget_sampling: str = "random"
    """``random``: each episode targets its own size/latency (spreads the front); ``fixed``: the budget."""
    warmup_episodes: int = 20
    """Episodes of uniformly random actions before the agent acts and trains."""
    noise_start: float = 0.5
    """Initial standard deviation of the exploration noise (DDPG/TD3), in action units."""
    noise_decay: float = 0.98
    """Noise scale factor per episode after warm-up."""
    noise_min: float = 0.05
    """Floor of the exploration noise."""
    learning_rate: float = 1e-3
    """Adam learning rate of actor and critic."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of actor and critic."""
    batch_size: int = 64
    """Transitions per gradient step."""
    gradient_steps: int = 0
    """Gradient steps after each episode (0 = one per layer, as AMC)."""
    buffer_size: int = 20_000
    """Replay buffer capacity in transitions."""
    tau: float = 0.01
    """Soft target-network update rate."""
    baseline_alpha: float = 0.5
    """Weight of the old value in the moving-average reward baseline."""
    latency_margin: float = 0.1
    """Safety margin of the latency prediction used by the budget wall."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "net_arch", tuple(int(n) for n in self.net_arch))
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        check_reward(self.reward)
        if self.warmup_episodes < 0 or self.batch_size < 1 or self.gradient_steps < 0 or self.buffer_size < 1:
            raise ValueError("warmup_episodes, gradient_steps >= 0 and batch_size, buffer_size >= 1 are required")
        if not (self.noise_start >= 0 and 0 < self.noise_decay <= 1 and self.noise_min >= 0):
            raise ValueError("noise_start, noise_min >= 0 and noise_decay in (0, 1] are required")
        if self.learning_rate <= 0 or not 0 < self.tau <= 1 or not 0 <= self.baseline_alpha < 1:
            raise ValueError("learning_rate > 0, tau in (0, 1] and baseline_alpha in [0, 1) are required")
        if not self.net_arch or min(self.net_arch) < 1:
            raise ValueError("net_arch must list positive layer sizes")
        self.env_settings  # noqa: B018 - validates mode, budget_sampling and macs_fraction

    @property
    def env_settings(self) -> EnvSettings:
        """The environment settings these options imply."""
        return EnvSettings(mode=self.mode, reward=self.reward, macs_fraction=self.macs_fraction,
                           latency_margin=self.latency_margin, budget_sampling=self.budget_sampling)


@dataclass
class _PrivateRng:
    """A private stream for code that draws from the global torch/numpy/random generators (SB3)."""

    seed: int
    """Seed of the stream."""
    _state: tuple = field(default=(), repr=False)
    _outer: tuple = field(default=(), repr=False)

    def __post_init__(self) -> None:
        outer = self._capture()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        self._state = self._capture()
        self._apply(outer)

    @staticmethod
    def _capture() -> tuple:
        return torch.get_rng_state(), np.random.get_state(), random.getstate()

    @staticmethod
    def _apply(state: tuple) -> None:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])

    def __enter__(self) -> _PrivateRng:
        self._outer = self._capture()
        self._apply(self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = self._capture()
        self._apply(self._outer)


_SEED = "seed"
"""Tag of a seed proposal's handle."""


class RLSearcher(Searcher):
    """One episode per candidate; works with or without an evaluator (without: no wall, spec-free features)."""

    options_type = RLOptions
    bounds_latency = True  # AMC's budget wall clamps every action (search/searchers/rl/budget_wall.py)

    def __init__(self, space: SearchSpace, budget: Budget, seed: int, run_dir: Path | None = None, **kwargs: Any):
        super().__init__(space, budget, seed, run_dir, **kwargs)
        if self.evaluator is not None:
            check_metric(self.evaluator.task.metric_spec)
        options: RLOptions = self.options
        latency_file = None if run_dir is None else Path(run_dir) / LATENCY_FILE
        saved = json.loads(latency_file.read_text()) if latency_file is not None and latency_file.is_file() else None
        self.env = CompressEnv(settings=options.env_settings, evaluator=self.evaluator, space=space, budget=budget,
                               evaluate=self._handed_result, latency_points=saved)
        points = self.env.latency_points()
        if latency_file is not None and saved is None and points is not None:
            latency_file.parent.mkdir(parents=True, exist_ok=True)
            latency_file.write_text(json.dumps(points))
        self._rng = np.random.default_rng(seed)
        self._torch = _PrivateRng(seed)
        algo = ALGOS[options.algo]
        with self._torch:
            self.model = algo("MlpPolicy", self.env, learning_rate=options.learning_rate,
                              buffer_size=options.buffer_size, learning_starts=0, batch_size=options.batch_size,
                              tau=options.tau, gamma=1.0, policy_kwargs={"net_arch": list(options.net_arch)},
                              seed=seed, device="cpu")
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.episodes = 0
        """Finished episodes (told candidates)."""
        self.diverged = 0
        """Restored episodes that the replay could not reproduce (see :meth:`restore`)."""
        self._baseline: float | None = None
        self._steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._handover: tuple[Policy, Result] | None = None

    # --- acting -------------------------------------------------------------------------

    def _noise_scale(self) -> float:
        options: RLOptions = self.options
        decayed = options.noise_start * options.noise_decay ** (self.episodes - options.warmup_episodes)
        return max(decayed, options.noise_min)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        options: RLOptions = self.options
        size = self.env.action_space.shape
        if self.episodes < options.warmup_episodes:
            return self._rng.uniform(-1.0, 1.0, size=size).astype(np.float32)
        with self._torch:
            action, _ = self.model.predict(obs, deterministic=options.algo != "sac")
        action = np.asarray(action, dtype=np.float64).reshape(size)
        if options.algo != "sac":  # truncated Gaussian around the actor's action (AMC)
            noisy = action + self._noise_scale() * self._rng.standard_normal(size)
            for _ in range(10):
                outside = np.abs(noisy) > 1.0
                if not outside.any():
                    break
                noisy[outside] = action[outside] + self._noise_scale() * self._rng.standard_normal(outside.sum())
            action = noisy
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def ask(self) -> Proposal:
        """Plays an episode up to the last layer; the proposal is what the last step would evaluate."""
        if self._last is not None:
            raise RuntimeError("ask() called again before tell()")
        seed = self.next_seed()
        if seed is not None:  # played as forced actions when told (see tell)
            return Proposal(seed, handle=(_SEED, self.episodes))
        obs, _ = self.env.reset(seed=self.seed if self.episodes == 0 else None)
        self._steps = []
        for _ in range(len(self.space.layers) - 1):
            action = self._act(obs)
            next_obs, _, _, _, info = self.env.step(action)
            self._steps.append((obs, next_obs, info["action"]))
            obs = next_obs
        action = self._act(obs)
        self._last = (obs, action)
        return Proposal(self.env.preview(action), handle=self.episodes)

    def _handed_result(self, policy: Policy) -> Result:
        """The environment's terminal evaluation: the result the runner measured for this policy."""
        if self._handover is None or self._handover[0] != policy:
            raise RuntimeError("the environment evaluated a policy the runner did not measure")
        return self._handover[1]

    # --- learning -----------------------------------------------------------------------

    def tell(self, proposal: Proposal, result: Result) -> None:
        """Finishes the episode with ``result``, stores it in the replay buffer and trains.

        A seed policy's episode is its layers' choices played as forced actions."""
        if proposal.handle == (_SEED, self.episodes):
            self._force(proposal.policy, result)
            return
        if self._last is None or proposal.handle != self.episodes:
            raise RuntimeError("tell() must follow the ask() that produced the proposal")
        obs, action = self._last
        self._handover = (proposal.policy, result)
        try:
            next_obs, reward, _, _, info = self.env.step(action)
        finally:
            self._handover, self._last = None, None
        self._steps.append((obs, next_obs, info["action"]))
        self._learn(reward)

    def _learn(self, reward: float) -> None:
        options: RLOptions = self.options
        baseline = reward if self._baseline is None else self._baseline
        advantage = np.array([reward - baseline], dtype=np.float32)
        self._baseline = options.baseline_alpha * baseline + (1 - options.baseline_alpha) * reward
        for i, (obs, next_obs, action) in enumerate(self._steps):
            done = np.array([i == len(self._steps) - 1])
            self.model.replay_buffer.add(obs[None], next_obs[None], action[None], advantage, done, [{}])
        self.episodes += 1
        if self.episodes >= max(options.warmup_episodes, 1):
            with self._torch:
                self.model.train(options.gradient_steps or len(self._steps), options.batch_size)

    def restore(self, finished: Sequence[Finished]) -> None:
        """Replays the finished episodes through ask/tell (same seed: the same proposals, so bit-exact).

        An episode the replay does not reproduce (e.g. a run resumed with other options) is still
        learned from: its policy is replayed as forced actions with its archived result, and counted
        in :attr:`diverged`; from then on the continuation is no longer bit-exact.
        """
        for item in finished:
            proposal = self.ask()
            if proposal.policy == item.policy:
                self.tell(proposal, item.result)
                continue
            self.diverged += 1
            self._force(item.policy, item.result)

    def _force(self, policy: Policy, result: Result) -> None:
        """Plays ``policy`` as forced actions and learns from ``result`` (seeds, and the resume fallback)."""
        obs, _ = self.env.reset(seed=self.seed if self.episodes == 0 else None)
        self._steps, self._last = [], None
        for i, name in enumerate(self.space.layers):
            action = self.env.action_of(policy, name)
            if i == len(self.space.layers) - 1:
                self._handover = (self.env.preview(action), result)
            next_obs, reward, _, _, info = self.env.step(action)
            self._steps.append((obs, next_obs, info["action"]))
            obs = next_obs
        self._handover = None
        self._learn(reward)

    def close(self) -> None:
        """Closes the environment."""
        self.env.close()
