"""Mimic students (Ba and Caruana 2014): the loss regresses logits, a small student learns a teacher's function
from its logits better than from labels (the paper's claim, tiny), and the built-in ``<teacher>-mimic`` tasks train
on their teacher task's logits while ``<teacher>-student`` train the same network on the labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from envs.tasks import build_architecture, evaluate_accuracy, load_task, registry
from envs.tasks.models import count_parameters
from envs.tasks.students import ShallowCNN, ShallowMLP, SmallCNN, teacher_targets
from envs.tasks.training import TrainRecipe, train_model
from methods.objective import mimic_loss

FAST = TrainRecipe(epochs=1, lr=2e-3, batch_size=64)


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_mimic_loss_is_half_the_squared_distance_of_the_logits() -> None:
    student, teacher = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    value = mimic_loss(student, teacher)
    assert torch.allclose(value, 0.5 * ((student - teacher) ** 2).sum() / 5)
    value.backward()
    assert torch.allclose(student.grad, (student - teacher).detach() / 5)
    assert float(mimic_loss(teacher, teacher)) == 0.0
    assert float(mimic_loss(teacher + 1.0, teacher)) > 0  # logits themselves, not a softmax: a shift costs


def test_a_mimic_student_learns_its_teacher_better_than_the_labels_teach_it() -> None:
    """Ba and Caruana's claim, tiny: on noisy labels, a small net regressing a wider teacher's logits agrees with
    the teacher more, and is more accurate on average, than the same net (same start, steps and order) trained on
    the labels."""
    accuracy = {"mimic": 0.0, "labels": 0.0}
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        truth = _mlp(16, 32, 32, 4)
        inputs = torch.randn(3000, 16, generator=generator)
        with torch.no_grad():
            labels = truth(inputs).argmax(1)
        noisy = labels[:1000].clone()
        flipped = torch.rand(1000, generator=generator) < 0.3
        noisy[flipped] = torch.randint(0, 4, (int(flipped.sum()),), generator=generator)
        train, test = TensorDataset(inputs[:1000], noisy), TensorDataset(inputs[1000:], labels[1000:])
        torch.manual_seed(seed)
        teacher = _mlp(16, 256, 256, 4)
        train_model(teacher, train, TrainRecipe(epochs=5, lr=1e-3, batch_size=32))
        recipe = TrainRecipe(epochs=40, lr=3e-3, batch_size=32)
        students = {}
        for kind, data, loss in (("mimic", teacher_targets(teacher, train), mimic_loss), ("labels", train, None)):
            torch.manual_seed(seed + 10)
            students[kind] = train_model(_mlp(16, 16, 4), data, recipe, loss=loss)
            accuracy[kind] += evaluate_accuracy(students[kind], test) / 3
        with torch.no_grad():
            told = teacher(test.tensors[0]).argmax(1)
            agree = {k: float((s(test.tensors[0]).argmax(1) == told).float().mean()) for k, s in students.items()}
        assert agree["mimic"] >= agree["labels"] + 0.02, (seed, agree)
    assert accuracy["mimic"] > accuracy["labels"], accuracy


def test_student_tasks_are_built_in_with_their_teachers() -> None:
    for teacher, factory, params in (("lenet300", ShallowMLP, 79_510), ("lenet5", ShallowCNN, 79_926),
                                     ("resnet", SmallCNN, 50_282)):
        mimic, student = registry.TASKS[f"{teacher}-mimic"], registry.TASKS[f"{teacher}-student"]
        assert mimic.teacher == teacher and student.teacher is None and registry.TASKS[teacher].teacher is None
        assert mimic.factory is factory and student.factory is factory and mimic.recipe == student.recipe
        model = build_architecture({"task": f"{teacher}-mimic"})
        assert isinstance(model, factory) and count_parameters(model) == params
        assert tuple(model.eval()(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
        assert count_parameters(model) < count_parameters(build_architecture({"task": teacher})) / 3


def test_the_mimic_task_regresses_its_teachers_logits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("lenet300", "lenet300-mimic", "lenet300-student"):
        monkeypatch.setitem(registry.TASKS, name, dataclasses.replace(registry.TASKS[name], recipe=FAST))
    teacher = load_task("lenet300", cache_dir=tmp_path)
    targets = teacher_targets(teacher.model, teacher.train)
    mimic = load_task("lenet300-mimic", cache_dir=tmp_path)
    control = load_task("lenet300-student", cache_dir=tmp_path)
    assert mimic.source == {"task": "lenet300-mimic"} and mimic.train is not None
    assert mimic.train.tensors[1].dtype == torch.int64  # fine-tunes and metrics keep the labels
    with torch.no_grad():
        errors = {t.name: float(mimic_loss(t.model(targets.tensors[0]), targets.tensors[1])) for t in (mimic, control)}
    assert errors["lenet300-mimic"] < 0.5 * errors["lenet300-student"], errors
    assert evaluate_accuracy(mimic.model, mimic.test) > 0.5
