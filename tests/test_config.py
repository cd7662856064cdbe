"""config.yaml: one shape for fine-tune settings, flat keys in the file, earlier run folders still load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from core.errors import UsageError
from envs.evaluator import EvaluatorSettings
from methods.finetune import FinetuneSettings
from methods.streams import Stream
from search.api import resume_config
from search.config import build_config
from search.export import ExportSettings

EARLIER_RUN = """\
task: lenet5
searcher: random
trials: 12
seed: 3
evaluator:
  bn_recalibration: true
  calibration_images: 500
  finetune_steps: 30
  finetune_lr: 0.001
  saliency_images: 256
  latency: measured
  latency_check_every: 5
export:
  finetune_epochs: 0.5
  finetune_lr: 0.0002
  max_models: 3
  distill_alpha: 0.5
  distill_temperature: 2.0
  prune_rounds: 2
"""
"""The sections of a config.yaml written before the settings held a FinetuneSettings."""


def test_an_earlier_run_folder_loads_into_the_nested_shape(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(EARLIER_RUN)
    config = resume_config(tmp_path)
    assert config.evaluator.finetune == FinetuneSettings(steps=30, lr=1e-3)
    assert config.export.finetune == FinetuneSettings(lr=2e-4, distill_alpha=0.5, distill_temperature=2.0,
                                                      prune_rounds=2)
    assert (config.export.finetune_epochs, config.export.max_models) == (0.5, 3)


def test_config_yaml_keeps_the_flat_keys_and_round_trips() -> None:
    config = build_config(yaml.safe_load(EARLIER_RUN))
    data = yaml.safe_load(config.to_yaml())
    added_since = {"timing": "worker", "paired_timing": True, "decode_check_every": 20,  # newer than that run
                   "promote_top": 0.2, "promote_steps": 30, "promote_lr": 0.001, "val_samples": 2000, "val_seed": 0}
    assert data["evaluator"] == {**yaml.safe_load(EARLIER_RUN)["evaluator"], **added_since}
    assert data["export"] == {**yaml.safe_load(EARLIER_RUN)["export"], "finetune_schedule": "constant", "onnx": False,
                              "rewind": "lr", "learned": None, "learned_epochs": 10.0, "learned_lr": 0.001,
                              "learned_strength": 1.0}
    assert build_config(data) == config


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"evaluator": {"finetune": {"steps": 3}}}, "unknown key(s) in config section 'evaluator': finetune"),
        ({"evaluator": {"finetune_lr": 0}}, "lr > 0"),
        ({"evaluator": {"finetune_steps": -1}}, "steps >= 0"),
        ({"export": {"finetune_steps": 10}}, "unknown key(s) in config section 'export': finetune_steps"),
        ({"export": {"prune_rounds": 0}}, "prune_rounds"),
        ({"export": {"distill_alpha": 2.0}}, "distill_alpha"),
        ({"export": {"finetune_epochs": -1}}, "finetune_epochs"),
    ],
)
def test_bad_finetune_keys_are_usage_errors(section: dict[str, dict[str, object]], needle: str) -> None:
    with pytest.raises(UsageError, match="config section") as error:
        build_config(section)
    assert needle in str(error.value)


def test_fields_a_section_cannot_record_keep_their_defaults() -> None:
    with pytest.raises(ValueError, match="distill_alpha must keep the default"):
        EvaluatorSettings(finetune=FinetuneSettings(distill_alpha=0.5))
    with pytest.raises(ValueError, match="steps, seed must keep the default"):
        ExportSettings(finetune=FinetuneSettings(steps=10, seed=1))


def test_the_final_finetune_runs_the_epochs_with_the_runs_seed() -> None:
    settings = ExportSettings(finetune_epochs=2.0, finetune=FinetuneSettings(lr=2e-4, distill_alpha=0.5))
    for train in (TensorDataset(torch.zeros(100, 1), torch.zeros(100)), Stream(list(range(100)))):
        evaluator = SimpleNamespace(task=SimpleNamespace(train=train))
        assert settings.final_finetune(evaluator, seed=7) == replace(settings.finetune, steps=4, seed=7)  # 200 / 64


@pytest.mark.parametrize(
    ("key", "registered"),
    [("quantizers", "linear"), ("saliencies", "magnitude"), ("channel_importances", "l1")],
)
def test_an_unregistered_name_in_the_space_is_a_usage_error_naming_the_choices(key: str, registered: str) -> None:
    build_config({"space": {key: [registered]}})
    with pytest.raises(UsageError, match=f"'nope' in space.{key}; choose from: .*{registered}"):
        build_config({"space": {key: [registered, "nope"]}})


def test_the_timing_place_is_checked() -> None:
    assert build_config({"evaluator": {"timing": "inline"}}).evaluator.timing == "inline"
    with pytest.raises(UsageError, match="timing must be one of"):
        build_config({"evaluator": {"timing": "elsewhere"}})
