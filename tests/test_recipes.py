"""Recipes: named fixed policies, reproduced exactly and run through the normal pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UsageError
from search.recipes import list_recipes, recipe_policy

LENET5 = ["conv1", "conv2", "fc1", "fc2"]


def test_deep_compression_lenet5_table_is_reproduced_exactly() -> None:
    policy = recipe_policy("deep-compression", "lenet5", LENET5)
    kept = {name: round(1 - choice.sparsity, 2) for name, choice in policy}
    bits = {name: choice.bits for name, choice in policy}
    assert kept == {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}
    assert bits == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    assert {choice.quantizer for _, choice in policy} == {"kmeans"}


def test_deep_compression_lenet300_table_is_reproduced_exactly() -> None:
    policy = recipe_policy("deep-compression", "lenet300", ["fc1", "fc2", "fc3"])
    assert {n: round(1 - c.sparsity, 2) for n, c in policy} == {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}
    assert {c.bits for _, c in policy} == {6}


def test_uniform_recipe_covers_any_model() -> None:
    policy = recipe_policy("uniform", "user:net.py:build", ["a", "b"])
    assert policy["a"] == policy["b"] and policy["a"].sparsity == 0.9


def test_bad_recipes(tmp_path: Path) -> None:
    assert "deep-compression" in list_recipes()
    with pytest.raises(UsageError, match="unknown recipe"):
        recipe_policy("magic", "lenet5", LENET5)
    with pytest.raises(UsageError, match="no table"):
        recipe_policy("deep-compression", "resnet", ["stem.0"])
    (tmp_path / "bad.yaml").write_text("tasks:\n  lenet5:\n    conv9: {sparsity: 0.5}\n")
    with pytest.raises(UsageError, match="conv9"):
        recipe_policy("bad", "lenet5", LENET5, recipes_dir=tmp_path)


def test_recipes_carry_rank_and_saliency(tmp_path: Path) -> None:
    (tmp_path / "svd.yaml").write_text(
        "saliency: obd\nchannel_importance: bn\ndefault: {sparsity: 0.5, bits: 4, rank: 0.25}\n"
    )
    policy = recipe_policy("svd", "lenet5", LENET5, recipes_dir=tmp_path)
    assert policy.saliency == "obd" and {c.rank for _, c in policy} == {0.25}
    assert policy.channel_importance == "bn"
    (tmp_path / "bad.yaml").write_text("saliency: random\ndefault: {sparsity: 0.5}\n")
    with pytest.raises(UsageError, match="saliency"):
        recipe_policy("bad", "lenet5", LENET5, recipes_dir=tmp_path)
