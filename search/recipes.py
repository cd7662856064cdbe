"""Named fixed policies (configs/recipes/*.yaml), run through the same pipeline as searched ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.errors import UsageError
from core.paths import CONFIG_DIR
from core.policy import LayerChoice, Policy
from methods.channel_importance import check_channel_importance
from methods.learned import check_learned
from methods.saliency import check_saliency

RECIPES_DIR = CONFIG_DIR / "recipes"


def list_recipes(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in recipes_dir.glob("*.yaml"))


def _choice(layer: str, data: Any, path: Path) -> LayerChoice:
    if not isinstance(data, Mapping):
        raise UsageError(f"recipe {path}: layer {layer!r} must map to sparsity/bits/keep/quantizer/rank")
    try:
        return LayerChoice(**dict(data))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"recipe {path}: bad choice for layer {layer!r}: {exc}") from exc


def recipe_policy(name: str, task: str, layers: Sequence[str], recipes_dir: Path = RECIPES_DIR) -> Policy:
    """The recipe's policy for ``task``: its per-task table, else its ``default`` choice for every layer; with the
    recipe's ``learned`` method, if it names one.

    Raises:
        UsageError: for an unknown recipe, a recipe without an entry for this task, or a table that
            names layers the model does not have.
    """
    path = recipes_dir / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(list_recipes(recipes_dir))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe {path} is not valid YAML") from exc
    saliency = data.get("saliency", "magnitude")
    importance = data.get("channel_importance", "l1")
    learned = data.get("learned")
    try:
        check_saliency(saliency)
        check_channel_importance(importance)
        if learned is not None:
            check_learned(learned)
    except (TypeError, ValueError) as exc:  # TypeError: an unhashable YAML value
        raise UsageError(f"recipe {path}: {exc}") from exc
    table = (data.get("tasks") or {}).get(task)
    if table is not None:
        unknown = sorted(set(table) - set(layers))
        if unknown:
            raise UsageError(f"recipe {name!r} names layers that {task!r} lacks: {', '.join(unknown)}")
        return Policy.from_choices(
            {layer: _choice(layer, table[layer], path) for layer in table}, saliency, importance, learned=learned
        )
    if "default" in data:
        default = _choice("default", data["default"], path)
        return Policy(tuple((layer, default) for layer in layers), saliency, importance, learned=learned)
    tasks = ", ".join(sorted(data.get("tasks") or {}))
    raise UsageError(f"recipe {name!r} has no table for task {task!r} (it covers: {tasks or 'none'})")
