"""Policy -> packed file -> reloaded model: exact, with structured pruning, fine-tune and BN recalibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.policy import LayerChoice, Policy
from envs.tasks import build_architecture
from methods.finetune import CodeSpec, FinetuneSettings, masked_finetune, recalibrate_batchnorm
from methods.packing import write_packed
from methods.pipeline import CompressedModel, Refinement, compress
from search import load_model

NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.b1(self.c1(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 7).flatten(1))

def build():
    torch.manual_seed(0)
    return Net()
"""

POLICY = Policy.from_choices({
    "stem": LayerChoice(sparsity=0.3, bits=4, keep=0.5),
    "c1": LayerChoice(sparsity=0.5, bits=2, keep=0.75),
    "fc": LayerChoice(sparsity=0.9, bits=32),
})


@pytest.fixture
def factory(tmp_path: Path) -> tuple[str, nn.Module]:
    path = tmp_path / "net.py"
    path.write_text(NET)
    source = f"{path}:build"
    return source, build_architecture({"model": source}).eval()


def _data(n: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 1, 28, 28, generator=generator)
    return TensorDataset(inputs, torch.randint(0, 10, (n,), generator=generator))


def _assert_reloads_exactly(compressed: CompressedModel, path: Path, base: nn.Module) -> None:
    """The packed file, written and loaded back into ``base``'s architecture, computes exactly what the compressed
    model does."""
    write_packed(path, compressed.blob)
    with torch.inference_mode():
        x = torch.randn(3, 1, 28, 28)
        assert torch.equal(load_model(path, model=base)(x), compressed.model(x))


@pytest.mark.parametrize("steps", [0, 3])
def test_file_size_and_reloaded_outputs_are_exact(factory, tmp_path: Path, steps: int) -> None:
    source, model = factory
    data = _data()
    refinement = Refinement(calibration=data.tensors[0], finetune=FinetuneSettings(steps=steps, batch_size=16),
                            train=data)
    compressed = compress(model, POLICY, input_shape=(1, 28, 28), source={"model": source}, refinement=refinement)
    path = tmp_path / "m.acz"
    write_packed(path, compressed.blob)
    assert path.stat().st_size == compressed.size_bytes == len(compressed.blob)
    reloaded = load_model(path, model=model)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(reloaded(x), compressed.model(x))
    assert reloaded.stem.out_channels == 4  # the residual group {stem, c1's output} kept half
    weight = reloaded.fc.weight
    assert int((weight == 0).sum()) >= int(0.9 * weight.numel())


def test_compression_shrinks_the_file_and_leaves_the_base_model_alone(factory) -> None:
    source, model = factory
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = compress(model, Policy(), input_shape=(1, 28, 28), source={"model": source})
    small = compress(model, POLICY, input_shape=(1, 28, 28), source={"model": source})
    assert small.size_bytes < dense.size_bytes / 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_masked_finetune_keeps_zeros_and_ends_on_the_code_grid() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    mask = torch.rand(32, 784) > 0.7
    with torch.no_grad():
        model[1].weight.mul_(mask)
    start = model[1].weight.detach().clone()
    masked_finetune(model, {"1": mask}, {"1": CodeSpec(3)}, _data(), FinetuneSettings(steps=5, lr=1e-2, batch_size=16))
    weight = model[1].weight.detach()
    assert torch.all(weight[~mask] == 0)
    assert not torch.equal(weight, start)
    for row, kept in zip(weight, mask, strict=True):
        assert len(torch.unique(row[kept])) <= 2**3  # every kept weight sits on its channel's 3-bit grid
    assert not torch.nn.utils.parametrize.is_parametrized(model[1])


def test_batchnorm_recalibration_matches_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    inputs = torch.randn(100, 1, 8, 8) * 3 + 1
    recalibrate_batchnorm(model, inputs, batch_size=100)
    features = model[0](inputs)
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.training


def test_distillation_loss_mixes_hard_and_soft_targets() -> None:
    from methods.finetune import distillation_loss

    torch.manual_seed(0)
    logits, teacher, labels = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    hard = nn.functional.cross_entropy(logits, labels)
    assert torch.equal(distillation_loss(logits, labels, teacher, 0.0, 4.0), hard)
    assert torch.equal(distillation_loss(logits, labels, None, 0.7, 4.0), hard)
    assert distillation_loss(teacher, labels, teacher, 1.0, 4.0).abs() < 1e-6  # student == teacher
    mixed = distillation_loss(logits, labels, teacher, 0.5, 2.0)
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(logits / 2, 1), nn.functional.softmax(teacher / 2, 1), reduction="batchmean"
    )
    assert torch.allclose(mixed, 0.5 * hard + 0.5 * 4 * soft, atol=1e-6)


def test_distilled_finetune_runs_and_moves_towards_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    mask = torch.ones(10, 784, dtype=torch.bool)
    data = _data(128)
    x = data.tensors[0]
    gap_before = (student(x) - teacher(x)).abs().mean().item()
    settings = FinetuneSettings(steps=40, lr=1e-2, batch_size=32, distill_alpha=1.0, distill_temperature=1.0)
    masked_finetune(student, {"1": mask}, {"1": CodeSpec(32)}, data, settings, teacher=teacher)
    assert (student(x) - teacher(x)).abs().mean().item() < gap_before


def test_kmeans_layers_share_values_through_finetune_and_file(factory, tmp_path: Path) -> None:
    source, model = factory
    policy = Policy.from_choices({
        "stem": LayerChoice(sparsity=0.2, bits=3, quantizer="kmeans"),
        "c1": LayerChoice(sparsity=0.6, bits=4, quantizer="kmeans", keep=0.5),
        "fc": LayerChoice(sparsity=0.9, bits=5, quantizer="kmeans"),
    })
    data = _data()
    refinement = Refinement(finetune=FinetuneSettings(steps=4, lr=1e-2, batch_size=16), train=data)
    compressed = compress(model, policy, input_shape=(1, 28, 28), source={"model": source}, refinement=refinement)
    for name, bits in (("stem", 3), ("c1", 4), ("fc", 5)):
        weight = dict(compressed.model.named_modules())[name].weight
        assert len(torch.unique(weight[weight != 0])) <= 2**bits
    path = tmp_path / "k.acz"
    write_packed(path, compressed.blob)
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(load_model(path, model=model)(x), compressed.model(x))


def test_low_rank_layers_pack_and_reload_exactly(factory, tmp_path: Path) -> None:
    source, model = factory
    policy = Policy.from_choices({
        "stem": LayerChoice(keep=0.5),
        "c1": LayerChoice(sparsity=0.2, bits=4, rank=0.5),
        "fc": LayerChoice(sparsity=0.5, bits=3, quantizer="kmeans", rank=0.5),
    })
    data = _data()
    refinement = Refinement(finetune=FinetuneSettings(steps=3, batch_size=16), train=data)
    compressed = compress(model, policy, input_shape=(1, 28, 28), source={"model": source}, refinement=refinement)
    assert compressed.meta["factorised"] == {"c1": 2, "fc": 5}  # the residual group keeps 4 of 8 channels
    fc = compressed.model.fc
    assert isinstance(fc, nn.Sequential) and fc[0].weight.shape == (5, 196) and fc[1].weight.shape == (10, 5)
    for factor in fc:
        kept = factor.weight[factor.weight != 0]
        assert len(torch.unique(kept)) <= 2**3
        assert int((factor.weight == 0).sum()) >= int(0.5 * factor.weight.numel())
    path = tmp_path / "lowrank.acz"
    write_packed(path, compressed.blob)
    reloaded = load_model(path, model=model)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(reloaded(x), compressed.model(x))
    whole = compress(model, Policy.from_choices({"fc": LayerChoice(sparsity=0.5, bits=3, quantizer="kmeans")}),
                     input_shape=(1, 28, 28), source={"model": source})
    assert compressed.size_bytes < whole.size_bytes


@pytest.mark.parametrize("saliency", ["obd", "taylor"])
def test_data_driven_saliency_picks_other_weights_and_reloads(factory, tmp_path: Path, saliency: str) -> None:
    source, model = factory
    choices = {"c1": LayerChoice(sparsity=0.5, bits=32), "fc": LayerChoice(sparsity=0.8, bits=6)}
    data = _data()
    by_magnitude = compress(model, Policy.from_choices(choices), input_shape=(1, 28, 28), source={"model": source})
    refinement = Refinement(saliency_data=data)
    scored = compress(model, Policy.from_choices(choices, saliency), input_shape=(1, 28, 28),
                      source={"model": source}, refinement=refinement)
    kept = scored.model.fc.weight != 0
    assert int(kept.sum()) == by_magnitude.model.fc.weight.count_nonzero()
    assert not torch.equal(kept, by_magnitude.model.fc.weight != 0)
    assert scored.meta["policy"]["saliency"] == saliency
    _assert_reloads_exactly(scored, tmp_path / "s.acz", model)
    with pytest.raises(ValueError, match="calibration data"):
        compress(model, Policy.from_choices(choices, saliency), input_shape=(1, 28, 28), source={"model": source})


def test_iterative_pruning_rounds_follow_the_schedule_and_end_exact(factory, monkeypatch) -> None:
    from methods import pipeline

    source, model = factory
    seen: list[tuple[int, float]] = []
    real = pipeline.masked_finetune

    def spy(net, masks, codes, train, settings, teacher=None, loss=None, device="cpu"):
        fc = masks["fc.weight"]  # masks are keyed by parameter name
        seen.append((settings.steps, 1 - fc.float().mean().item()))
        assert torch.all(net.fc.weight[~fc] == 0)
        real(net, masks, codes, train, settings, teacher, loss, device)
        assert torch.all(net.fc.weight[~fc] == 0)

    monkeypatch.setattr(pipeline, "masked_finetune", spy)
    policy = Policy.from_choices({"fc": LayerChoice(sparsity=0.8, bits=4)})
    refinement = Refinement(finetune=FinetuneSettings(steps=10, batch_size=16, prune_rounds=3), train=_data())
    compressed = compress(model, policy, input_shape=(1, 28, 28), source={"model": source}, refinement=refinement)
    assert [steps for steps, _ in seen] == [3, 3, 4]
    schedule = pipeline.pruning_schedule(3)
    assert schedule[-1] == 1.0 and schedule[0] < schedule[1] < 1.0
    for (_, sparsity), fraction in zip(seen, schedule, strict=True):
        assert abs(sparsity - 0.8 * fraction) < 1e-3
    weight = compressed.model.fc.weight
    assert int((weight == 0).sum()) == int(0.8 * weight.numel())


@pytest.mark.parametrize("importance", ["l2", "bn", "taylor"])
def test_channel_importance_is_applied_and_replayed(factory, tmp_path: Path, importance: str) -> None:
    source, model = factory
    choices = {"stem": LayerChoice(keep=0.5), "fc": LayerChoice(sparsity=0.5, bits=8)}
    refinement = Refinement(saliency_data=_data())
    compressed = compress(model, Policy.from_choices(choices, channel_importance=importance),
                          input_shape=(1, 28, 28), source={"model": source}, refinement=refinement)
    assert compressed.model.stem.out_channels == 4
    assert compressed.meta["policy"]["channel_importance"] == importance
    _assert_reloads_exactly(compressed, tmp_path / "c.acz", model)
