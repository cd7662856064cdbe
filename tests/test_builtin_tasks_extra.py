"""The mobilenet96 and chartransformer built-in tasks: architectures, data, discovery, export and a short training.

No fast test trains a full recipe: a few optimiser steps on a slice show that the model learns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from core.policy import LayerChoice, Policy
from core.spec import SampleShape
from envs.tasks import TrainRecipe, build_architecture, evaluate, load_task, mnist_splits, registry, train_model
from envs.tasks.chartransformer import CharTransformer
from envs.tasks.mnist96 import SHAPE, mnist96_splits, upsample
from envs.tasks.mobilenet import InvertedResidual
from envs.tasks.mobilenet96 import MobileNetV2At96
from envs.tasks.models import count_parameters
from envs.tasks.text import ALPHABET, SEQUENCE, text_splits
from methods.discovery import discover_layers, total_macs
from methods.pipeline import compress
from methods.pipeline import decode as decode_packed

TEXT = SampleShape((SEQUENCE,), vocab=len(ALPHABET))
COMPRESSIBLE = (nn.Conv2d, nn.Linear, nn.MultiheadAttention, nn.Embedding)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small batches run faster on one thread, and do not suffer from a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_tasks_are_registered_with_their_data_and_metric() -> None:
    assert registry.TASKS["mobilenet96"].data is mnist96_splits and registry.TASKS["mobilenet96"].metric == "accuracy"
    assert registry.TASKS["chartransformer"].data is text_splits and registry.TASKS["chartransformer"].metric == "bpc"
    for name, params in (("mobilenet96", 216_266), ("chartransformer", 248_930)):
        assert f"{params:,} params" in registry.TASKS[name].description
        assert count_parameters(build_architecture({"task": name})) == params


def test_mobilenet96_architecture() -> None:
    model = MobileNetV2At96().eval()
    stem = model.stem[0]
    assert stem.in_channels == 3 and stem.stride == (2, 2)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert [b.residual for b in blocks] == [True, False, True, False, True, False, True, False]
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert tuple(model.blocks(model.stem(x)).shape) == (2, 96, 6, 6)
        assert tuple(model(x).shape) == (2, 10)
    assert 23e6 <= total_macs(discover_layers(model, SHAPE)) <= 24e6  # compute-bound, unlike mobilenet at 28x28


def test_mnist96_data_is_the_mnist_split_upsampled() -> None:
    splits, base = mnist96_splits(), mnist_splits()
    for data, small in zip(splits, base, strict=True):
        x, y = data.tensors
        assert x.shape == (len(small), *SHAPE) and x.dtype == torch.float32 and x.is_contiguous()
        assert torch.equal(y, small.tensors[1])
    x = splits[2].tensors[0][:50]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # replicated grey channel
    original = base[2].tensors[0][:50]
    assert torch.equal(x, upsample(original))
    # bilinear upsampling keeps the normalised range and, closely, each image's mean and its appearance at 28x28
    assert original.min() <= x.min() and x.max() <= original.max()
    assert (x.mean(dim=(1, 2, 3)) - original.mean(dim=(1, 2, 3))).abs().max() < 0.05
    back = F.interpolate(x[:, :1], size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    assert (back - original).abs().mean() < 0.15


def test_chartransformer_is_causal_and_its_fused_inference_matches_training_mode() -> None:
    torch.manual_seed(0)
    model = CharTransformer().eval()
    assert "causal_mask" not in model.state_dict()  # a fixed buffer, not a weight
    x = torch.randint(0, len(ALPHABET), (3, SEQUENCE))
    changed = x.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % len(ALPHABET)
    with torch.no_grad():
        logits = model(x)
        assert tuple(logits.shape) == (3, SEQUENCE, len(ALPHABET))
        assert torch.equal(model(changed)[:, :40], logits[:, :40])  # a position never sees later characters
        assert torch.allclose(model(x[:, :10]), logits[:, :10], atol=1e-5)  # shorter inputs take the mask's corner
        slow = model.train()(x)  # no dropout: the training path computes what the fused inference kernels do
    assert torch.allclose(slow, logits, atol=1e-5)


@pytest.mark.parametrize(("model", "shape"), [(MobileNetV2At96(), SHAPE), (CharTransformer(), TEXT)])
def test_every_conv_linear_attention_and_embedding_layer_is_compressible(model: nn.Module, shape: tuple) -> None:
    layers = {name for name, module in model.named_modules() if isinstance(module, COMPRESSIBLE)}
    layers -= {name for name in layers if name.endswith(".out_proj")}  # part of its attention's weights
    specs = discover_layers(model, shape)
    assert {s.name for s in specs} == layers
    if isinstance(model, CharTransformer):
        kinds = {s.name: s.kind for s in specs}
        assert kinds["embed"] == kinds["position"] == "embedding" and kinds["head"] == "linear"
        assert [n for n, k in kinds.items() if k == "attention"] == [f"encoder.layers.{i}.self_attn" for i in (0, 1)]


def test_a_compressed_chartransformer_file_rebuilds_the_same_model() -> None:
    torch.manual_seed(0)
    small = {"vocab": 20, "dim": 16, "heads": 2, "feedforward": 32, "context": 12}
    model = CharTransformer(**small).eval()
    shape = SampleShape((12,), vocab=20)
    names = [s.name for s in discover_layers(model, shape)]
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=4) for name in names})
    compressed = compress(model, policy, input_shape=shape, source={"task": "chartransformer"})
    rebuilt = decode_packed(compressed.blob, CharTransformer(**small))
    x = torch.randint(0, 20, (3, 12))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), compressed.model.eval()(x))


def test_chartransformer_exports_to_onnx_with_its_causal_mask() -> None:
    from envs.runtimes import RUNTIMES

    torch.manual_seed(0)
    model = CharTransformer().eval()
    x = torch.randint(0, len(ALPHABET), (4, SEQUENCE))
    runnable = RUNTIMES["onnxruntime"].convert(model, TEXT, threads=1, calibration=None)
    with torch.no_grad():
        assert (runnable(x) - model(x)).abs().max() < 1e-4


def test_chartransformer_loads_with_given_weights(tmp_path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(CharTransformer().state_dict(), weights)
    task = load_task("chartransformer", weights=weights, cache_dir=tmp_path)
    assert task.metric == "bpc" and task.num_classes == len(ALPHABET)
    assert tuple(task.input_shape) == (SEQUENCE,) and task.input_shape.vocab <= len(ALPHABET)


def test_a_few_steps_on_a_slice_reduce_the_loss() -> None:
    torch.manual_seed(0)
    images, labels = mnist_splits()[0].tensors
    slice96 = TensorDataset(upsample(images[:96]), labels[:96])
    model = MobileNetV2At96()
    before = _loss(model, slice96)
    train_model(model, slice96, TrainRecipe(epochs=1, lr=registry.TASKS["mobilenet96"].recipe.lr, batch_size=16))
    assert _loss(model, slice96) < 0.9 * before

    torch.manual_seed(0)
    text = TensorDataset(*(t[:256] for t in text_splits()[0].tensors))
    model = CharTransformer()
    before = evaluate(model, text, "bpc")
    train_model(model, text, TrainRecipe(epochs=1, lr=registry.TASKS["chartransformer"].recipe.lr, batch_size=32))
    assert evaluate(model, text, "bpc") < before - 1.5


def _loss(model: nn.Module, data: TensorDataset) -> float:
    """Cross-entropy on ``data`` with BatchNorm using the batch's statistics (a few steps barely move its running
    statistics)."""
    model.train()
    with torch.no_grad():
        return float(F.cross_entropy(model(data.tensors[0]), data.tensors[1]))
