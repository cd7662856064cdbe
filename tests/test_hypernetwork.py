"""Static hypernetworks (Ha, Dai and Le 2016): generated kernels follow the paper's two equations, one generator is
shared by every generated layer, the stored values are the generator's and the embeddings', and a network whose
kernels are generated learns a task about as well as the same network with free kernels from far fewer values (the
paper's claim, tiny)."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from envs.tasks import build_architecture, evaluate_accuracy, registry
from envs.tasks.hypernets import HyperLeNet5, HyperResNet
from envs.tasks.models import count_parameters
from envs.tasks.training import TrainRecipe, train_model
from methods.discovery import discover_layers, total_macs
from methods.hypernetwork import BANK, GeneratedConv2d, HyperSpec, attach, eligible_convs, generated_macs
from methods.packing import pack
from tests.fixtures.tiny_nets import INPUT_SHAPE


class ThreeConvs(nn.Module):
    """conv 1->8, conv 8->16, conv 16->16 (3x3, BatchNorm; other widths on request), pool, linear: two
    convolutions a hypernetwork of 4x4 slices can generate."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 16), classes: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])
        self.conv2, self.bn2 = nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False), nn.BatchNorm2d(widths[1])
        self.conv3, self.bn3 = nn.Conv2d(widths[1], widths[2], 3, padding=1), nn.BatchNorm2d(widths[2])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * widths[2], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.relu(self.bn3(self.conv3(x))))


def _generated(seed: int = 0, z_dim: int = 4, hidden: int = 8, classes: int = 3) -> ThreeConvs:
    torch.manual_seed(seed)
    model = ThreeConvs(classes=classes)
    attach(model, z_dim=z_dim, hidden=hidden, slice_in=4, slice_out=4)
    return model


def test_generated_kernel_follows_ha_equations() -> None:
    model = _generated()
    bank = getattr(model, BANK)
    net, spec = bank.net, bank.net.spec
    assert (spec.slice_in, spec.slice_out, spec.kernel) == (4, 4, 3)
    kernels = bank.kernels()
    offset = 0
    for layer, (out_ch, in_ch) in zip(kernels, ((16, 8), (16, 16)), strict=True):
        assert layer.shape == (out_ch, in_ch, 3, 3)
        for row in range(out_ch // 4):
            for col in range(in_ch // 4):
                z = bank.z[offset]
                offset += 1
                for i in range(4):  # a_i = W_i z + B_i; K_i = W_out a_i + B_out (its N_out x f x f values)
                    a = net.w_in[i * spec.hidden:(i + 1) * spec.hidden] @ z + net.b_in[i * spec.hidden:(i + 1) *
                                                                                      spec.hidden]
                    k_i = (net.w_out @ a + net.b_out).view(4, 3, 3)
                    block = layer[row * 4:(row + 1) * 4, col * 4 + i]
                    assert torch.allclose(block, k_i, atol=1e-6)
    assert offset == bank.z.shape[0] == 8 + 16


def test_one_hypernetwork_is_shared_by_every_generated_layer() -> None:
    model = _generated()
    bank = getattr(model, BANK)
    assert isinstance(model.conv2, GeneratedConv2d) and isinstance(model.conv3, GeneratedConv2d)
    assert type(model.conv1) is nn.Conv2d  # one input channel: not generated
    before = [k.detach().clone() for k in bank.kernels()]
    with torch.no_grad():
        bank.net.w_out[0, 0] += 1.0
    after = bank.kernels()
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    with torch.no_grad():
        bank.z[9] += 1.0  # layer 2's second slice: row 0, column 1 of its 4x4 grid of slices
    changed = bank.kernels()
    assert torch.equal(changed[0], after[0])
    diff = (changed[1] != after[1]).any(dim=(2, 3))
    assert diff[0:4, 4:8].all() and int(diff.sum()) == 16
    names = [name for name, _ in model.named_parameters()]
    assert sum(name.startswith(f"{BANK}.") for name in names) == 5 and "conv2.weight" not in names


def test_stored_values_are_the_generator_and_the_embeddings() -> None:
    model = _generated(z_dim=4, hidden=8)
    spec = getattr(model, BANK).net.spec
    assert spec == HyperSpec(z_dim=4, hidden=8, slice_in=4, slice_out=4, kernel=3)
    generator = 4 * (8 * 4 + 8) + 9 * 4 * (8 + 1)  # N_in (d N_z + d) + f^2 N_out (d + 1)
    assert spec.generator_parameters() == generator
    bank_values = sum(p.numel() for name, p in model.named_parameters() if name.startswith(BANK))
    assert bank_values == generator + 24 * 4
    dense = ThreeConvs()
    saved = dense.conv2.weight.numel() + dense.conv3.weight.numel() - bank_values
    assert count_parameters(dense) - count_parameters(model) == saved > 0
    size = {name: len(pack(m.state_dict(), {}, {})) for name, m in (("dense", dense), ("generated", model))}
    assert size["dense"] - size["generated"] >= 4 * saved - 512  # bytes of the real files: 4 per value saved


def test_generated_kernels_are_reused_in_eval_and_follow_every_update() -> None:
    model = _generated()
    bank = getattr(model, BANK)
    model.eval()
    x = torch.randn(2, *INPUT_SHAPE)
    with torch.no_grad():
        first = bank.kernels()
        assert bank.kernels() is first  # cached: a deployed model generates once
        out = model(x)
        bank.z.add_(0.5)  # an in-place update invalidates the cache
        assert bank.kernels() is not first and not torch.equal(model(x), out)
    clone = copy.deepcopy(model)
    assert getattr(clone, BANK) is clone.conv2._bank is clone.conv3._bank  # a copy keeps one shared bank
    model.train()
    loss = model(x).square().sum()
    loss.backward()
    assert bank.z.grad is not None and bank.net.w_out.grad is not None and bank.z.grad.abs().sum() > 0


def test_attach_refuses_what_it_cannot_generate() -> None:
    with pytest.raises(ValueError, match="cannot generate"):
        attach(nn.Sequential(nn.Linear(4, 4)), z_dim=4, hidden=4, slice_in=4, slice_out=4)
    with pytest.raises(ValueError, match="eligible convolutions: conv2, conv3"):
        attach(ThreeConvs(), z_dim=4, hidden=4, slice_in=4, slice_out=4, layers=["conv1"])
    assert eligible_convs(ThreeConvs(), 3, 3) == []  # channels are not multiples of the slice
    with pytest.raises(ValueError, match="already has"):
        attach(_generated(), z_dim=4, hidden=4, slice_in=4, slice_out=4)


def _digits() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits: 600 training images, the other 1,197 for test."""
    images, labels = load_digits(return_X_y=True)
    inputs = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    targets = torch.tensor(labels)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    return (TensorDataset(inputs[order[:600]], targets[order[:600]]),
            TensorDataset(inputs[order[600:]], targets[order[600:]]))


@pytest.mark.slow
def test_generated_network_learns_nearly_like_the_dense_one_and_beats_a_dense_one_as_small() -> None:
    """Ha et al.'s claim, tiny: trained alike, the network whose two convolutions a hypernetwork generates (580
    values for 3,456 kernel weights) comes within a few points of the dense network, beats a dense network with as
    many values in those layers (widths 8-5-5: 585), and beats the same generated network with its generator and
    embeddings left at their initial values (so what is learned is in the hypernetwork)."""
    train, test = _digits()
    recipe = TrainRecipe(epochs=15, lr=3e-3, batch_size=32)
    accuracy = {"dense": 0.0, "generated": 0.0, "as small": 0.0, "frozen generator": 0.0}
    for seed in range(3):
        for kind in accuracy:
            torch.manual_seed(seed)
            if kind in ("generated", "frozen generator"):
                model = _generated(seed=seed, classes=10)
                getattr(model, BANK).requires_grad_(kind == "generated")
            else:
                model = ThreeConvs((8, 5, 5) if kind == "as small" else (8, 16, 16), classes=10)
            accuracy[kind] += evaluate_accuracy(train_model(model, train, recipe), test) / 3
    small = ThreeConvs((8, 5, 5))
    assert small.conv2.weight.numel() + small.conv3.weight.numel() >= sum(
        p.numel() for p in getattr(_generated(), BANK).parameters())
    assert accuracy["generated"] >= accuracy["dense"] - 0.05, accuracy
    assert accuracy["generated"] > accuracy["as small"], accuracy
    assert accuracy["generated"] > accuracy["frozen generator"] + 0.02, accuracy


def test_hypernetwork_tasks_are_built_in() -> None:
    for name, factory, params in (("lenet5-hyper", HyperLeNet5, 412_734), ("resnet-hyper", HyperResNet, 105_802)):
        assert registry.TASKS[name].factory is factory
        model = build_architecture({"task": name})
        assert isinstance(model, factory) and count_parameters(model) == params
    resnet = HyperResNet()
    layers = {spec.name for spec in discover_layers(resnet, (1, 28, 28))}
    generated = {name for name, m in resnet.named_modules() if isinstance(m, GeneratedConv2d)}
    assert len(generated) == 8 and not layers & generated  # the search never chooses for a generated kernel
    assert "stem.0" in layers and "fc" in layers


def test_channel_groups_through_a_generated_convolution_stay_whole(caplog: pytest.LogCaptureFixture) -> None:
    """The generator fixes a generated layer's channels: a group that would remove them is left out with one
    warning, in a moment (the generator's computation is not traced), and the other groups stay prunable."""
    from methods.structured import channel_groups

    assert [g.leader for g in channel_groups(HyperLeNet5(), (1, 28, 28))] == ["fc1"]
    assert "generated by a hypernetwork" in caplog.text
    assert channel_groups(HyperResNet(), (1, 28, 28)) == []
    dense = [g.leader for g in channel_groups(ThreeConvs(), INPUT_SHAPE)]
    assert dense and not {g.leader for g in channel_groups(_generated(), INPUT_SHAPE)} & {"conv1", "conv2"}


def test_cached_hypernetwork_tasks_go_stale_when_the_generator_code_changes() -> None:
    import hashlib
    import inspect

    from envs.tasks import hypernets, models
    from methods import hypernetwork

    digest = hashlib.sha256()
    for module in (hypernets, models, hypernetwork):
        digest.update(open(inspect.getfile(module), "rb").read())
    assert registry.builtin_code_fingerprint(HyperResNet) == digest.hexdigest()[:16]


def test_a_generated_convolution_counts_the_macs_of_the_convolution_it_replaced() -> None:
    torch.manual_seed(0)
    dense = ThreeConvs()
    generated = copy.deepcopy(dense)
    attach(generated, z_dim=4, hidden=8, slice_in=4, slice_out=4)
    dense_macs = total_macs(discover_layers(dense, INPUT_SHAPE))
    assert generated_macs(dense, INPUT_SHAPE) == 0
    ordinary = total_macs(discover_layers(generated, INPUT_SHAPE))  # conv1 and the head only
    assert ordinary < dense_macs
    assert ordinary + generated_macs(generated, INPUT_SHAPE) == dense_macs
