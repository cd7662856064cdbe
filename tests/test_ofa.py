"""Once-for-all: channel permutation, importance sorting inside trained segments, masking equal to cutting, the
paper's claim on a tiny case (sub-networks of the supernet beat the same widths cut from the original, with no
fine-tune), the supernet cache, and the ``--ofa`` search mode's configuration."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from core.errors import UsageError
from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.learned_bases import LearnedBases
from envs.tasks import evaluate_accuracy, load_task
from envs.tasks.models import ResNet
from methods.coupled_channels import coupled_channels
from methods.finetune import FinetuneSettings, recalibrate_batchnorm
from methods.learned import LEARNED, LearnedSettings, Target, learn
from methods.learned.ofa import OnceForAll, _gated, _Widths, importance_order, phase_widths
from methods.structured import channel_groups, kept_channels, prune_channels
from search.cli import main
from search.config import build_config, once_for_all
from tests.fixtures.entry_script import ROOT
from tests.fixtures.tiny_nets import INPUT_SHAPE, tiny_cnn, tiny_data

TINY = ROOT / "tests/fixtures/tiny_nets.py"
KEEPS = tuple(1 - i * 0.125 for i in range(7))


def _groups(model: torch.nn.Module, shape: tuple[int, ...] = INPUT_SHAPE) -> list:
    return coupled_channels(model, shape, [g.leader for g in channel_groups(model, shape)])


def _noisy(samples: int, seed: int) -> TensorDataset:
    """tiny_data with extra noise: hard enough that narrow sub-networks lose accuracy."""
    data = tiny_data(samples, seed)
    noise = torch.randn(data.tensors[0].shape, generator=torch.Generator().manual_seed(seed + 100))
    return TensorDataset(data.tensors[0] + 2.0 * noise, data.tensors[1])


def _cut(model: torch.nn.Module, keep: dict[str, float], importance: str, calibration: torch.Tensor) -> torch.nn.Module:
    cut = copy.deepcopy(model)
    prune_channels(cut, INPUT_SHAPE, keep, importance=importance)
    recalibrate_batchnorm(cut, calibration)
    return cut


@pytest.mark.parametrize("case", ["tiny_cnn", "resnet"])
def test_permuting_channels_keeps_the_function(case: str) -> None:
    torch.manual_seed(0)
    model, shape = (tiny_cnn(), INPUT_SHAPE) if case == "tiny_cnn" else (ResNet(), (1, 28, 28))
    model.train()
    model(torch.randn(16, *shape))  # non-trivial BatchNorm statistics
    model.eval()
    inputs = torch.randn(4, *shape)
    before = model(inputs)
    groups = _groups(model, shape)
    assert any(g.buffers for g in groups)
    for group in groups:
        order = torch.randperm(group.channels)
        group.permute(model, order)
    assert torch.allclose(model(inputs), before, atol=1e-5)
    first = groups[0]
    weight = dict(model.named_parameters())[first.slices[0].name].detach().clone()
    first.permute(model, torch.arange(first.channels).flip(0))
    assert torch.equal(dict(model.named_parameters())[first.slices[0].name][0], weight[-1])
    with pytest.raises(ValueError, match="permutation"):
        first.permute(model, torch.zeros(first.channels, dtype=torch.int64))


def test_importance_order_sorts_only_inside_the_trained_segments() -> None:
    importance = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.8, 0.3, 0.6])
    assert importance_order(importance, ()).tolist() == [1, 5, 3, 7, 2, 6, 4, 0]
    order = importance_order(importance, (2, 5, 8))
    for width in (2, 5, 8):  # every width trained before keeps exactly its channels
        assert set(order[:width].tolist()) == set(range(width))
    assert order.tolist() == [1, 0, 3, 2, 4, 5, 7, 6]
    assert phase_widths((2, 3, 4, 6, 8), 8, 1) == (8, 6)
    assert phase_widths((2, 3, 4, 6, 8), 8, 2) == (8, 6, 4, 3, 2)


def test_masking_the_last_channels_equals_cutting_them() -> None:
    model = tiny_cnn()
    groups = _groups(model)
    keep = {"conv1": 0.5, "conv2": 0.375, "fc1": 0.25}
    counts = {g.leader: kept_channels(g.channels, keep[g.leader]) for g in groups}
    masks = {g.leader: _Widths(g.channels, "cpu") for g in groups}
    inputs = tiny_data(8).tensors[0]
    with torch.no_grad(), _gated(model, groups, masks):
        for group in groups:
            masks[group.leader].current = (torch.arange(group.channels) < counts[group.leader]).float()
        masked = model(inputs)
    cut = copy.deepcopy(model)
    prune_channels(cut, INPUT_SHAPE, keep, importance="index")
    assert cut.conv1.out_channels == counts["conv1"] and cut.fc1.out_features == counts["fc1"]
    assert torch.allclose(cut(inputs), masked, atol=1e-5)
    assert torch.equal(cut.conv2.weight, model.conv2.weight[: counts["conv2"], : counts["conv1"]])
    assert all(torch.equal(m.current, torch.ones_like(m.current)) for m in masks.values())  # opened on exit
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_supernet_subnetworks_beat_the_same_widths_cut_from_the_original() -> None:
    """Cai et al.'s claim, tiny: after progressive shrinking with distillation, sub-networks work without fine-tuning
    where the same widths cut from the trained model (L1 channel importance, BatchNorm recalibrated) lose accuracy."""
    torch.manual_seed(0)
    train, test = _noisy(512, 1), _noisy(512, 2)
    model = tiny_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train.tensors[0]), train.tensors[1]).backward()
        optimizer.step()
    model.eval()
    groups = _groups(model)
    widths = {g.leader: sorted({kept_channels(g.channels, k) for k in KEEPS}) for g in groups}
    target = Target((), groups, train, widths=widths)
    supernet, outcome = learn(model, "ofa", target, LearnedSettings(epochs=6, batch_size=32))
    assert set(outcome.statistics) == {f"ofa:order:{g.leader}" for g in groups}
    generator = torch.Generator().manual_seed(0)
    leaders = [g.leader for g in groups]
    keeps = [{leader: KEEPS[int(torch.randint(len(KEEPS), (1,), generator=generator))] for leader in leaders}
             for _ in range(16)] + [dict.fromkeys(leaders, KEEPS[-1])]
    calibration = train.tensors[0]
    ours = [evaluate_accuracy(_cut(supernet, keep, "index", calibration), test) for keep in keeps]
    theirs = [evaluate_accuracy(_cut(model, keep, "l1", calibration), test) for keep in keeps]
    wins = sum(a > b for a, b in zip(ours, theirs, strict=True))
    assert wins >= 13, (ours, theirs)
    assert sum(ours) / len(ours) >= sum(theirs) / len(theirs) + 0.03
    assert evaluate_accuracy(supernet, test) >= evaluate_accuracy(model, test) - 0.03  # full width kept


def test_elastic_method_is_declared_and_removes_nothing() -> None:
    assert LEARNED["ofa"].elastic and not LEARNED["ofa"].structured
    assert not any(LEARNED[name].elastic for name in LEARNED.names() if name != "ofa")


@pytest.fixture()
def evaluator(tmp_path: Path) -> Evaluator:
    task = load_task(model=f"{TINY}:tiny_cnn", data=f"{TINY}:tiny_splits", cache_dir=tmp_path / "weights")
    evaluator = Evaluator(task, DeviceProfile(name="test", threads=1, batch=8, warmup=1, repeats=3))
    _configure(evaluator.learned, tmp_path / "supernets")
    return evaluator


def _configure(bases: LearnedBases, cache: Path, seed: int = 0, keeps: tuple[float, ...] = KEEPS) -> LearnedBases:
    bases.cache_dir, bases.keeps = cache, keeps
    bases.settings = LearnedSettings(epochs=1, batch_size=64, seed=seed)
    return bases


def test_supernet_is_trained_once_and_read_back_from_the_cache(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = evaluator.learned.base("ofa")
    assert not first.outcome.cached and len(list((tmp_path / "supernets").glob("ofa-*.pt"))) == 1

    def fresh(**changes: object) -> LearnedBases:
        bases = LearnedBases(evaluator.task, evaluator.layer_names, evaluator.leaders)
        return _configure(bases, tmp_path / "supernets", **changes)  # type: ignore[arg-type]

    def refuse(*_: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr(OnceForAll, "fit", refuse)
    second = fresh().base("ofa")
    assert second.outcome.cached and second.outcome.seconds == pytest.approx(first.outcome.seconds)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                  second.model.state_dict().values(), strict=True))
    assert all(torch.equal(first.outcome.statistics[k], second.outcome.statistics[k]) for k in first.outcome.statistics)
    for changed in (fresh(seed=1), fresh(keeps=KEEPS[:3])):  # another training or other widths: not the cached one
        with pytest.raises(UsageError, match="trained again"):
            changed.base("ofa")


def test_supernet_policies_cut_the_first_channels(evaluator: Evaluator) -> None:
    policy = Policy.from_choices({"conv2": LayerChoice(keep=0.5)}, channel_importance="l1", learned="ofa")
    floored = evaluator.learned.floored(policy)
    assert floored.channel_importance == "index" and floored["conv2"].keep == 0.5
    assert evaluator.learned.inelastic("ofa") == [] and evaluator.learned.inelastic("l0_gates") == []
    compressed = evaluator.compress(policy, evaluator.refinement(FinetuneSettings(steps=0)))
    base = evaluator.learned.base("ofa").model
    assert compressed.model.conv2.out_channels == 4
    assert torch.equal(compressed.model.conv2.weight, base.conv2.weight[:4])


def test_ofa_mode_sets_its_search_and_refuses_a_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = build_config(once_for_all({"space": {"keep_min": 0.5}}))
    assert config.export.learned == "ofa" and config.space.channel_importances == ("index",)
    assert config.evaluator.finetune.steps == 0 and config.evaluator.promote_top == 0.0
    assert config.space.keep_min == 0.5 and not config.space.learned_seed
    with pytest.raises(UsageError, match="channel_importances"):
        build_config({"export": {"learned": "ofa"}})
    with pytest.raises(UsageError, match="drop export.learned"):
        once_for_all({"export": {"learned": "l0_gates"}})
    out = tmp_path / "run"
    assert main(["--task", "lenet300", "--ofa", "--learned", "l0_gates", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ofa" in err[0] and not out.exists()
