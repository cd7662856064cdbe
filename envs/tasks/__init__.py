"""Compression tasks: a trained model, its data, metric and loss, and its provenance."""

from __future__ import annotations

from envs.tasks.data import mnist_splits
from envs.tasks.definition import TaskDefinition
from envs.tasks.registry import (
    DEFAULT_TASK,
    TASK_NAMES,
    TASKS,
    Task,
    TaskSpec,
    build_architecture,
    default_cache_dir,
    load_task,
)
from envs.tasks.training import TrainRecipe, evaluate, evaluate_accuracy, train_model

__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskDefinition",
    "TaskSpec",
    "TrainRecipe",
    "build_architecture",
    "default_cache_dir",
    "evaluate",
    "evaluate_accuracy",
    "load_task",
    "mnist_splits",
    "train_model",
]
