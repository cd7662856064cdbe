"""The Compress-v0 environment on a real task: API checkers, action mapping, budget, seeding, rewards."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import search.searchers.rl  # noqa: F401 - registers Compress-v0
from core.budget import Budget
from core.policy import FP32_BITS, LayerChoice, Policy
from core.result import Result
from core.space import SearchSpace, SpaceSettings
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from search.searchers.rl.environment import CompressEnv, EnvSettings
from search.searchers.rl.rewards import FAILED_REWARD, REWARDS, Reference, terminal_reward

FAST = DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3)
SIZE = 40_000


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(load_task("lenet300"), FAST)


def make(evaluator: Evaluator, mode: str = "joint", size: int | None = SIZE, **settings) -> CompressEnv:
    """An environment on a coarse grid (sparsity step 0.1), which keeps the wall's calibration short."""
    settings_ = SpaceSettings(sparsity_step=0.1, quantizers=("linear", "kmeans"))
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings_, tuple(evaluator.layers))
    return CompressEnv(settings=EnvSettings(mode=mode, **settings), evaluator=evaluator, space=space,
                       budget=Budget(size_bytes=size))


def episode(env: CompressEnv, actions: np.ndarray, seed: int | None = None) -> tuple[list[np.ndarray], float, dict]:
    obs, _ = env.reset(seed=seed)
    seen, done, reward, info = [obs], False, 0.0, {}
    for action in actions:
        obs, reward, done, truncated, info = env.step(action)
        seen.append(obs)
        assert env.observation_space.contains(obs) and not truncated
    assert done
    return seen, reward, info


@pytest.mark.parametrize("mode", ["prune", "bits", "joint"])
def test_gymnasium_and_sb3_checkers_pass(evaluator: Evaluator, mode: str) -> None:
    env = make(evaluator, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning fails the test
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    expected = {"prune": ("sparsity", "keep"), "bits": ("bits", "quantizer"),
                "joint": ("sparsity", "bits", "quantizer", "keep")}[mode]
    assert env.grid.dims == expected and env.action_space.shape == (len(expected),)


def test_make_builds_its_own_evaluator() -> None:
    env = gymnasium.make("Compress-v0", task="lenet300", budget_mb="100KB", target_latency_ms=50, mode="bits",
                         device=FAST)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(env.action_space.sample())
    assert info["result"].ok and info["size_bytes"] <= 100_000


def test_extreme_actions_snap_to_the_ends_of_the_grids(evaluator: Evaluator) -> None:
    env = make(evaluator, size=None)
    _, _, info = episode(env, -np.ones((3, 4)))
    assert info["policy"] == Policy.from_choices({name: LayerChoice() for name in evaluator.layer_names})
    _, _, info = episode(env, np.ones((3, 4)))
    settings = env.space.settings
    for name, choice in info["policy"]:
        assert choice.bits == min(settings.bits) and choice.quantizer == settings.quantizers[-1]
        assert settings.sparsity_max - settings.sparsity_step < choice.sparsity <= settings.sparsity_max
        assert choice.keep == (settings.keep_min if name in evaluator.leaders else 1.0)


def test_random_episodes_stay_within_a_tight_budget(evaluator: Evaluator) -> None:
    env = make(evaluator, size=SIZE)
    rng = np.random.default_rng(0)
    clamped = 0
    for _ in range(6):
        actions = rng.uniform(-1, 1, size=(3, 4))
        _, reward, info = episode(env, actions)
        assert info["feasible"] and info["size_bytes"] <= SIZE
        assert info["predicted"].size_bytes >= info["size_bytes"]  # the model bounds the real file
        assert reward == pytest.approx(-(1 - info["val_accuracy"]))
        wanted = [env.grid.choice((a + 1) / 2, lead) for a, lead in zip(actions, env.leaders, strict=True)]
        unwalled = env.policy_of(wanted)
        clamped += unwalled != info["policy"]
    assert clamped > 0, "the budget was never binding; the test would not notice a missing wall"


def test_macs_budget_in_prune_mode(evaluator: Evaluator) -> None:
    env = make(evaluator, "prune", size=None, macs_fraction=0.3)
    rng = np.random.default_rng(1)
    original = sum(spec.macs for spec in evaluator.layers)
    for _ in range(3):
        _, _, info = episode(env, rng.uniform(-1, 1, size=(3, 2)))
        assert info["macs"] <= 0.3 * original and info["feasible"]
        assert all(choice.bits == FP32_BITS for _, choice in info["policy"])


def test_same_seed_same_episode_with_sampled_targets(evaluator: Evaluator) -> None:
    env = make(evaluator, budget_sampling="random")
    actions = np.random.default_rng(2).uniform(-1, 1, size=(3, 4))
    first, _, info_a = episode(env, actions, seed=7)
    second, _, info_b = episode(env, actions, seed=7)
    other, _, _ = episode(env, actions, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert info_a["policy"] == info_b["policy"]
    assert not np.array_equal(first[0], other[0])  # the sampled target is part of the observation


def test_external_evaluate_receives_the_final_policy(evaluator: Evaluator) -> None:
    seen: list[Policy] = []

    def evaluate(policy: Policy) -> Result:
        seen.append(policy)
        return evaluator.evaluate(policy)

    base = make(evaluator)
    env = CompressEnv(settings=base.settings, evaluator=evaluator, space=base.space, budget=base.budget,
                      evaluate=evaluate, cost_model=base.cost_model)
    env.reset(seed=0)
    env.step(np.zeros(4))
    env.step(np.zeros(4))
    preview = env.preview(np.zeros(4))
    assert seen == []
    _, _, _, _, info = env.step(np.zeros(4))
    assert seen == [info["policy"]] == [preview]
    with pytest.raises(RuntimeError):
        env.step(np.zeros(4))


def test_rewards_and_penalties() -> None:
    good = Result(val_accuracy=0.9, size_bytes=10, latency_ms=1.0, macs=1000)
    reference = Reference(accuracy=0.95, macs=10_000)
    assert set(REWARDS) == {"error", "error_log_macs", "relative_accuracy"}
    assert terminal_reward("error", good, reference, 0.0) == pytest.approx(-0.1)
    assert terminal_reward("error_log_macs", good, reference, 0.0) == pytest.approx(-0.1 * 3 / 4)
    assert terminal_reward("relative_accuracy", good, reference, 0.0) == pytest.approx(0.9 / 0.95 - 1)
    bpc_reference = Reference(accuracy=-2.0)  # scores of a lower-is-better metric are negative
    worse, better = Result(val_accuracy=-2.2, size_bytes=10), Result(val_accuracy=-1.9, size_bytes=10)
    assert terminal_reward("relative_accuracy", worse, bpc_reference, 0.0) == pytest.approx(-0.1)
    assert terminal_reward("relative_accuracy", better, bpc_reference, 0.0) == pytest.approx(0.05)
    assert terminal_reward("error", good, reference, 0.5) < min(terminal_reward(n, good, reference, 0) for n in REWARDS)
    assert terminal_reward("error", Result.failed("boom"), reference, 0.0) == FAILED_REWARD
    with pytest.raises(ValueError, match="unknown reward"):
        EnvSettings(reward="accuracy")
    with pytest.raises(ValueError, match="macs_fraction"):
        EnvSettings(mode="joint", macs_fraction=0.5)


MULTI = DeviceProfile(name="test-env-multi", runtimes=("torch", "torch-int8"), threads=1, batch=8, warmup=1,
                      repeats=3)
"""FAST's settings with int8 PyTorch allowed too."""


def test_the_runtime_is_one_more_action_entry_read_at_the_first_step(evaluator: Evaluator) -> None:
    single = make(evaluator)
    assert single.action_space.shape == (len(single.grid.dims),) and not single.runtimes
    assert episode(single, np.zeros((3, len(single.grid.dims))))[2]["policy"].runtime is None
    evaluator = Evaluator(evaluator.task, MULTI)
    settings_ = SpaceSettings(sparsity_step=0.1)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings_, tuple(evaluator.layers),
                        runtimes=MULTI.runtimes)
    loose = CompressEnv(settings=EnvSettings(mode="joint"), evaluator=evaluator, space=space,
                        budget=Budget(latency_ms=1e6))
    model = loose.cost_model
    assert model is not None and dict(model.latencies).keys() == {"torch", "torch-int8"}
    assert set(loose.runtimes) == {"torch", "torch-int8"} and loose.action_space.shape == (len(loose.grid.dims) + 1,)
    lows = {r: loose.cost_models[r].costs(loose.most).latency_ms for r in loose.runtimes}
    assert lows[loose.runtimes[0]] >= lows[loose.runtimes[1]]  # slowest first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(loose, skip_render_check=True)
        sb3_check_env(loose, warn=True)
    dims = len(loose.grid.dims)
    for level, runtime in ((-1.0, loose.runtimes[0]), (1.0, loose.runtimes[1])):
        obs, _ = loose.reset(seed=0)
        assert obs[-1] == 0.0  # no runtime chosen yet
        actions = np.zeros((3, dims + 1))
        actions[0, -1], actions[1:, -1] = level, -level  # only the first step's entry counts
        _, _, info = episode(loose, actions)
        assert info["policy"].runtime == runtime and info["result"].runtime == runtime
        assert info["predicted"] == loose.cost_models[runtime].costs([c for _, c in info["policy"]])
        assert loose.action_of(info["policy"], evaluator.layer_names[0])[-1] == pytest.approx(
            2 * (loose.runtimes.index(runtime) + 0.5) / 2 - 1)
    slow, fast = lows[loose.runtimes[0]], lows[loose.runtimes[1]]
    if fast < slow:  # a target only the faster runtime meets: the wall moves the runtime choice
        tight = CompressEnv(settings=EnvSettings(mode="joint"), evaluator=evaluator, space=space,
                            budget=Budget(latency_ms=(slow + fast) / 2), cost_model=model)
        assert tight.runtimes == loose.runtimes
        actions = -np.ones((3, dims + 1))
        _, _, info = episode(tight, actions)
        assert info["policy"].runtime == loose.runtimes[1]
        assert info["predicted"].latency_ms <= (slow + fast) / 2
