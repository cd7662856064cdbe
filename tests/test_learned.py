"""What each learned-sparsity paper says its method does, on a tiny network; and how the pipeline treats the result."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from core.errors import UsageError
from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.tasks import load_task
from methods.coupled_channels import coupled_channels, silence_dead_channels
from methods.learned import LEARNED, LearnedSettings, Target, check_learned, learn
from methods.learned.group_lasso import group_shrink
from methods.learned.l0_gates import gate_sample, gate_value, open_probability
from methods.learned.variational_dropout import THRESHOLD, local_noise, negative_kl
from methods.pipeline import compress
from methods.structured import channel_groups, prune_channels
from search.export import ExportSettings
from search.recipes import recipe_policy
from tests.fixtures.tiny_nets import INPUT_SHAPE, TinyCNN, tiny_cnn, tiny_data

KEYS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")
SOURCE = {"task": "test"}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_cnn()


def _groups(model: nn.Module) -> list:
    return coupled_channels(model, INPUT_SHAPE, [g.leader for g in channel_groups(model, INPUT_SHAPE)])


def _learned(model: nn.Module, name: str, strength: float) -> tuple[nn.Module, object, list]:
    groups = _groups(model)
    trained, outcome = learn(model, name, Target(KEYS, groups, tiny_data()),
                             LearnedSettings(epochs=20, lr=1e-2, strength=strength, batch_size=32))
    return trained, outcome, groups


# sparse variational dropout


def test_variational_dropout_prunes_exactly_the_weights_whose_log_alpha_exceeds_the_threshold(model: nn.Module) -> None:
    trained, outcome, _ = _learned(model, "variational_dropout", 1.0)
    pruned = 0
    for key in KEYS:
        log_alpha, weight = outcome.statistics[key], trained.get_parameter(key)
        assert torch.equal(weight == 0, log_alpha > THRESHOLD), key
        pruned += int((log_alpha > THRESHOLD).sum())
    assert pruned > 0


def test_variational_dropout_kl_rewards_noise() -> None:
    log_alpha = torch.linspace(-8, 8, 33)
    values = negative_kl(log_alpha)
    assert torch.all(values[1:] > values[:-1])  # more noise, smaller KL: the prior pushes alpha up
    assert abs(float(negative_kl(torch.tensor(30.0)))) < 1e-6 and float(values[0]) < -4


@pytest.mark.parametrize("layer", [nn.Linear(5, 3), nn.Conv2d(2, 3, 3, padding=1), nn.Conv1d(2, 3, 3)])
def test_local_reparameterisation_gives_the_preactivation_variance(layer: nn.Module) -> None:
    torch.manual_seed(0)
    log_sigma2 = torch.log(torch.rand_like(layer.weight) * 0.5 + 0.05)
    x = torch.randn(1, 5) if isinstance(layer, nn.Linear) else torch.randn(1, 2, *([6] * (layer.weight.dim() - 2)))
    handle = local_noise(layer, log_sigma2)
    layer.train()
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(4000)])
        layer.eval()
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear)
                           else layer._conv_forward(x, layer.weight, layer.bias))  # noqa: SLF001 - no noise in eval
    handle.remove()
    expected = (F.linear(x.pow(2), log_sigma2.exp()) if isinstance(layer, nn.Linear)
                else layer._conv_forward(x.pow(2), log_sigma2.exp(), None))  # noqa: SLF001
    assert torch.allclose(draws.var(0), expected, rtol=0.15, atol=1e-3)
    assert torch.allclose(draws.mean(0), layer(x).detach(), atol=0.1)


# group lasso and L0 gates: zeroed channels, removed without changing the outputs


def test_group_shrink_is_the_group_soft_threshold() -> None:
    factors = group_shrink(torch.tensor([0.0, 0.5, 2.0, 4.0]), torch.tensor([1.0, 1.0, 1.0, 2.0]))
    assert torch.equal(factors, torch.tensor([0.0, 0.0, 0.5, 0.5]))


def test_hard_concrete_gates_reach_exact_zero_and_one() -> None:
    draws = gate_sample(torch.zeros(20000), torch.Generator().manual_seed(0))
    assert float(draws.min()) == 0.0 and float(draws.max()) == 1.0 and 0.2 < float(draws.mean()) < 0.8
    assert float(gate_value(torch.tensor(-9.0))) == 0.0 and float(gate_value(torch.tensor(9.0))) == 1.0
    probabilities = open_probability(torch.linspace(-6, 6, 13))
    assert torch.all(probabilities[1:] > probabilities[:-1])


@pytest.mark.parametrize(("name", "strength"), [("group_lasso", 2.0), ("l0_gates", 20.0), ("early_bird", 1.0)])
def test_structured_methods_zero_whole_channels_whose_removal_keeps_the_outputs(
    name: str, strength: float, model: nn.Module
) -> None:
    trained, _, groups = _learned(model, name, strength)
    params = dict(trained.named_parameters())
    dead = {g.leader: int(g.dead(params).sum()) for g in groups}
    assert sum(dead.values()) > 0 and all(dead[g.leader] < g.channels for g in groups)
    for group in groups:  # every slice of a dead channel is zero: outputs and inputs alike
        squares = group.squares(params)
        assert torch.equal(squares == 0, group.dead(params))
    pruned = copy.deepcopy(trained)
    keep = {g.leader: (g.channels - dead[g.leader]) / g.channels for g in groups}
    prune_channels(pruned, INPUT_SHAPE, keep)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in trained.parameters())
    inputs = tiny_data(64, seed=5).tensors[0]
    with torch.no_grad():
        assert torch.allclose(pruned(inputs), trained(inputs), atol=1e-5)


def test_coupled_slices_cover_producers_norms_and_consumers(model: nn.Module) -> None:
    groups = {g.leader: g for g in _groups(model)}
    conv1 = {(p.name, p.dim, p.output) for p in groups["conv1"].slices}
    assert conv1 == {("conv1.weight", 0, True), ("conv1.bias", 0, True), ("bn1.weight", 0, True),
                     ("bn1.bias", 0, True), ("conv2.weight", 1, False)}
    into_fc1 = next(p for p in groups["conv2"].slices if p.name == "fc1.weight")
    assert len(into_fc1.positions) == 128 and torch.equal(into_fc1.channels.bincount(), torch.full((8,), 16))
    assert float(groups["conv2"].sizes()[0]) == 6 * 9 + 1 + 16 * 16


def test_silencing_a_dead_channel_changes_no_output(model: nn.Module) -> None:
    dead = copy.deepcopy(model)
    with torch.no_grad():
        dead.conv2.weight[3] = 0
        dead.conv2.bias[3] = 0
    inputs = tiny_data(32).tensors[0]
    before = dead(inputs)
    assert silence_dead_channels(dead, _groups(dead))["conv2"] == 1
    assert torch.equal(dead.fc1.weight.reshape(16, 8, 16)[:, 3], torch.zeros(16, 16))
    assert torch.allclose(dead(inputs), before, atol=1e-6)


# the pipeline: learned zeros are floors


def test_a_learned_policy_keeps_every_learned_zero_pruned(model: nn.Module) -> None:
    base = copy.deepcopy(model)
    with torch.no_grad():
        base.fc1.weight[:, :64] = 0  # half of fc1's weights, as a learned method might leave them
    sizes = {}
    for sparsity in (0.1, 0.75):
        policy = Policy.from_choices({"fc1": LayerChoice(sparsity=sparsity, bits=32)}, learned="group_lasso")
        compressed = compress(base, policy, input_shape=INPUT_SHAPE, source=SOURCE)
        weight = compressed.model.fc1.weight
        assert torch.count_nonzero(weight[:, :64]) == 0
        assert float((weight == 0).float().mean()) == pytest.approx(max(sparsity, 0.5), abs=1e-3)
        sizes[sparsity] = compressed.size_bytes
    plain = Policy.from_choices({"fc1": LayerChoice(sparsity=0.1, bits=32)})
    stored_zeros = compress(base, plain, input_shape=INPUT_SHAPE, source=SOURCE).size_bytes
    assert sizes[0.75] < sizes[0.1] < 0.75 * stored_zeros  # without the method, 40% of fc1 is stored as zeros


def test_policy_records_its_learned_method() -> None:
    policy = Policy.from_choices({"fc1": LayerChoice(sparsity=0.5)}, learned="l0_gates")
    assert Policy.from_json(policy.to_json()) == policy and policy.to_dict()["learned"] == "l0_gates"
    plain = Policy.from_choices({"fc1": LayerChoice(sparsity=0.5)})
    assert "learned" not in plain.to_dict() and plain.digest() != policy.digest()


def test_learned_names_are_checked_everywhere(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown learned method 'lasso'; choose one of: variational_dropout"):
        check_learned("lasso")
    with pytest.raises(ValueError, match="unknown learned method"):
        ExportSettings(learned="lasso")
    with pytest.raises(ValueError, match="strength"):
        ExportSettings(learned_strength=-1)
    (tmp_path / "bad.yaml").write_text("learned: lasso\ndefault: {bits: 5}\n")
    with pytest.raises(UsageError, match="unknown learned method"):
        recipe_policy("bad", "lenet5", ["fc1"], recipes_dir=tmp_path)
    for name in LEARNED.names():  # every method has its recipe
        assert recipe_policy(name.replace("_", "-"), "any", ["a", "b"]).learned == name


def test_export_gives_candidates_the_configured_method_unless_they_name_their_own() -> None:
    settings = ExportSettings(learned="variational_dropout", learned_epochs=3, learned_strength=0.5)
    assert settings.exported_policy(Policy()).learned == "variational_dropout"
    assert settings.exported_policy(Policy(learned="l0_gates")).learned == "l0_gates"
    assert ExportSettings().exported_policy(Policy()) == Policy()
    assert settings.learned_settings(7) == LearnedSettings(epochs=3, strength=0.5, seed=7)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    """A LeNet-300-100 evaluator whose learned methods train briefly."""
    evaluator = Evaluator(load_task("lenet300"), DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3))
    evaluator.learned.settings = LearnedSettings(epochs=3, strength=20.0)
    return evaluator


def test_evaluator_trains_each_method_once_and_removes_its_dead_channels(evaluator: Evaluator) -> None:
    policy = Policy.from_choices({name: LayerChoice(bits=32) for name in evaluator.layer_names}, learned="l0_gates")
    base = evaluator.learned.base("l0_gates")
    assert evaluator.learned.base("l0_gates") is base and base.outcome.seconds > 0
    assert 0 < base.dead["fc1"] < 300 and base.kept_weights < 1.0
    floored = evaluator.learned.floored(policy)
    assert floored["fc1"].keep == pytest.approx((300 - base.dead["fc1"]) / 300, abs=1e-6)
    compressed = evaluator.compress(policy)
    assert compressed.model.fc1.out_features == 300 - base.dead["fc1"]
    result = evaluator.evaluate(policy)
    assert result.status == "ok" and result.params < sum(p.numel() for p in evaluator.task.model.parameters())
    unchanged = evaluator.compress(Policy(learned="l0_gates"), evaluator.refinement())  # no fine-tune
    inputs = evaluator.val_data.tensors[0][:64]
    with torch.no_grad():  # removing the closed channels left the trained model's function as it was
        assert torch.allclose(unchanged.model(inputs), base.model(inputs), atol=1e-4)


# lottery tickets: rewinding between the rounds of iterative pruning


@pytest.mark.parametrize("rewind", ["lr", "weights", "init"])
def test_weight_rewinding_restores_the_checkpoint_on_kept_weights(
    rewind: str, model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    from methods import pipeline
    from methods.finetune import FinetuneSettings
    from methods.pipeline import Refinement

    seen = []

    def fake_finetune(net: nn.Module, masks: dict, codes: dict, *args: object, **kwargs: object) -> None:
        seen.append((net.fc1.weight.detach().clone(), masks["fc1.weight"].clone()))
        with torch.no_grad():
            net.fc1.weight.add_(0.5 * masks["fc1.weight"])  # stands for a round of training

    monkeypatch.setattr(pipeline, "masked_finetune", fake_finetune)
    settings = FinetuneSettings(steps=30, prune_rounds=3, rewind=rewind)
    policy = Policy.from_choices({"fc1": LayerChoice(sparsity=0.6, bits=32)})
    initial = TinyCNN().state_dict()
    compress(model, policy, input_shape=INPUT_SHAPE, source=SOURCE,
             refinement=Refinement(finetune=settings, train=tiny_data(), initial=initial))
    assert len(seen) == 3
    for number, (weight, mask) in enumerate(seen):
        if rewind == "init":  # every round restarts from the untrained weights
            assert torch.equal(weight, initial["fc1.weight"] * mask), number
        else:
            assert torch.equal(weight, model.fc1.weight * mask) == (number == 0 or rewind == "weights"), number
        assert torch.count_nonzero(weight[~mask]) == 0
    assert torch.all(seen[2][1] <= seen[1][1]) and seen[2][1].sum() < seen[1][1].sum()  # masks shrink


def test_cli_refuses_an_unknown_learned_method_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from search.cli import main

    assert main(["--task", "lenet300", "--learned", "lasso", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown learned method 'lasso'" in err and "group_lasso" in err
    assert not (tmp_path / "run").exists()


# soft weight-sharing


def test_soft_sharing_snaps_every_weight_to_a_component_mean_and_kmeans_stores_them_exactly(
    model: nn.Module,
) -> None:
    trained, outcome, _ = _learned(model, "soft_sharing", 1.0)
    means = outcome.statistics["means"]
    assert float(means[0]) == 0.0 and len(means) == 17
    values = torch.cat([trained.get_parameter(key).detach().reshape(-1) for key in KEYS])
    assert bool(torch.isin(values, means).all())  # every weight is a mean: at most 16 non-zero values
    assert 0 < int((values == 0).sum()) < len(values)
    policy = Policy.from_choices({name: LayerChoice(bits=4, quantizer="kmeans") for name in ("fc1", "conv2")},
                                 learned="soft_sharing")
    stored = compress(trained, policy, input_shape=INPUT_SHAPE, source=SOURCE).model
    for name in ("fc1", "conv2"):  # a layer's codebook holds exactly the means its weights use
        assert torch.equal(stored.get_submodule(name).weight, trained.get_submodule(name).weight), name


def test_mixture_snaps_to_the_most_responsible_component() -> None:
    from methods.learned.soft_sharing import Mixture

    mixture = Mixture([torch.tensor([-1.0, 1.0])], components=2)
    with torch.no_grad():
        mixture.means.copy_(torch.tensor([-1.0, 1.0]))
        mixture.log_variances.fill_(math.log(0.01))
        mixture.logits.zero_()
    snapped = mixture.snapped(torch.tensor([-1.2, -0.6, -0.01, 0.02, 0.7, 1.3]))
    assert torch.equal(snapped, torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]))


# Bayesian compression


def test_posterior_bits_follow_the_posterior_spread() -> None:
    from methods.learned.bayesian import posterior_bits

    mean = torch.tensor([1.0, -1.0, 0.5, 0.0])
    assert posterior_bits(mean, torch.full((4,), 0.01)) == 4  # step 0.2 over a span of 2
    assert posterior_bits(mean, torch.full((4,), 1e-12)) == 8 and posterior_bits(mean, torch.full((4,), 4.0)) == 1
    assert posterior_bits(torch.zeros(3), torch.ones(3)) == 1


def test_bayesian_bits_fill_the_layers_a_policy_leaves_at_fp32(evaluator: Evaluator) -> None:
    base = evaluator.learned.base("bayesian")
    assert set(base.bits) == {"fc1", "fc2", "fc3"} and all(1 <= b <= 8 for b in base.bits.values())
    policy = Policy.from_choices({"fc1": LayerChoice(bits=3, quantizer="kmeans"), "fc2": LayerChoice()},
                                 learned="bayesian")
    floored = evaluator.learned.floored(policy)
    assert floored["fc1"].bits == 3 and floored["fc1"].quantizer == "kmeans"
    assert floored["fc2"].bits == base.bits["fc2"] and floored["fc3"].bits == base.bits["fc3"]


# warm starts


def test_learned_seed_starts_the_search_from_what_the_method_learned(evaluator: Evaluator, tmp_path) -> None:
    from core.budget import Budget
    from core.space import SearchSpace, SpaceSettings
    from search.seeds import SEEDS_FILE, run_seeds

    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers))
    seeds = run_seeds(tmp_path, evaluator, space, Budget(size_bytes=60_000), trials=10, learned="l0_gates")
    seed, base = seeds[0], evaluator.learned.base("l0_gates")
    assert seed.learned == "l0_gates" and all(s.learned is None for s in seeds[1:]) and len(seeds) <= 2
    for name in evaluator.layer_names:
        weight = base.model.get_parameter(f"{name}.weight")
        zeros = float((weight == 0).float().mean())
        assert zeros - 0.05 < seed[name].sparsity <= zeros + 1e-6
    alive = max((300 - base.dead["fc1"]) / 300, space.keep_grid()[0])  # on the keep grid, at least its smallest
    assert alive - 0.125 < seed["fc1"].keep <= alive + 1e-6 and seed["fc1"].keep < 1
    assert run_seeds(tmp_path, evaluator, space, Budget(size_bytes=60_000), trials=10) == seeds  # read back
    assert (tmp_path / SEEDS_FILE).is_file()


def test_moving_a_policy_to_the_budget_keeps_its_learned_method() -> None:
    from core.space import SearchSpace, SpaceSettings

    space = SearchSpace(("a", "b"), ("a",), SpaceSettings())
    policy = Policy.from_choices({"a": LayerChoice(sparsity=0.5), "b": LayerChoice()}, learned="l0_gates")
    assert space.scaled_keeps(policy, 0.5).learned == "l0_gates"
    assert space.scaled_density(policy, 0.5).learned == "l0_gates"


def test_rewinding_to_initialisation_follows_the_removed_channels_and_needs_the_initial_weights(
    model: nn.Module,
) -> None:
    from methods.finetune import FinetuneSettings
    from methods.pipeline import Refinement

    settings = FinetuneSettings(steps=4, prune_rounds=2, rewind="init", batch_size=32)
    policy = Policy.from_choices({"conv2": LayerChoice(keep=0.5, sparsity=0.3, bits=32)})
    initial = TinyCNN().state_dict()
    compressed = compress(model, policy, input_shape=INPUT_SHAPE, source=SOURCE,
                          refinement=Refinement(finetune=settings, train=tiny_data(), initial=initial))
    assert compressed.model.conv2.out_channels == 4
    with pytest.raises(ValueError, match="initial weights"):
        compress(model, policy, input_shape=INPUT_SHAPE, source=SOURCE,
                 refinement=Refinement(finetune=settings, train=tiny_data()))


def test_built_in_tasks_keep_their_initial_weights() -> None:
    task = load_task("lenet300")
    torch.manual_seed(task.recipe.seed)
    assert task.initial is not None and torch.equal(task.initial["fc1.weight"], type(task.model)().fc1.weight)
    assert not torch.equal(task.initial["fc1.weight"], task.model.fc1.weight)


def test_rewinding_to_initialisation_refuses_given_weights(tmp_path) -> None:
    from search import run_search

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), weights)
    fixture = f"{Path(__file__).parent / 'fixtures' / 'tiny_nets.py'}"
    with pytest.raises(UsageError, match="rewind: init needs the model's initial weights"):
        run_search(model=f"{fixture}:TinyCNN", weights=str(weights), data=f"{fixture}:tiny_splits",
                   export={"rewind": "init", "prune_rounds": 2}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_method_that_cannot_train_the_model_fails_before_any_output(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from methods.learned import LEARNED, LearnedMethod
    from search import run_search

    class Failing(LearnedMethod):
        def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> object:
            raise RuntimeError("this layer cannot carry noise\nsecond line")

    monkeypatch.setitem(LEARNED._entries, "failing", Failing())  # noqa: SLF001 - a method that fails, for this test
    with pytest.raises(UsageError, match=r"learned method 'failing' cannot train this model \(RuntimeError: this "
                                         r"layer cannot carry noise\); choose another method$"):
        run_search(task="lenet300", export={"learned": "failing"}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_runs_learned_method_applies_to_every_candidate(evaluator: Evaluator) -> None:
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=8) for name in evaluator.layer_names})
    plain = evaluator.evaluate(policy)
    evaluator.learned_default = "l0_gates"
    try:
        assert evaluator.with_learned(policy).learned == "l0_gates"
        assert evaluator.with_learned(replace(policy, learned="bayesian")).learned == "bayesian"
        learned = evaluator.evaluate(policy)
        assert learned is evaluator.evaluate(replace(policy, learned="l0_gates"))  # one candidate, one cache entry
        assert learned.params < plain.params  # the closed channels are gone
    finally:
        evaluator.learned_default = None


@pytest.mark.slow
def test_the_reported_baseline_is_the_model_as_given_when_the_run_starts_from_a_learned_method(tmp_path) -> None:
    """The report's uncompressed baseline (and every ratio beside it) is the user's model, not what the learned
    method made of it."""
    from search import run_search

    original = load_task("lenet300").model
    outcome = run_search(task="lenet300", searcher="recipe", searcher_options={"name": "fp32"},
                         export={"learned": "early_bird", "finetune_epochs": 0},
                         device="cpu-b1", out=tmp_path / "run")
    (model,) = outcome.models
    assert outcome.baseline.params == sum(p.numel() for p in original.parameters())
    assert model.params < outcome.baseline.params  # the ticket lost channels: the baseline is not that model
    assert outcome.baseline.size_bytes > model.size_bytes
    assert "## Uncompressed baseline" in (tmp_path / "run" / "report.md").read_text()
