"""Every built-in task trained from scratch with its recipe: parameters, fp32 bytes, training time, metric.

Each task is trained in a fresh cache folder (nothing is reused), so the time is the first-use cost a user
pays, and the test metric is the one the README's task table states. The test suite trains only the LeNets'
recipes; this benchmark is where the larger recipes are checked.

    python benchmarks/builtin_tasks.py [--tasks resnet,mobilenet,charlstm]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from envs.tasks.registry import TASK_NAMES  # noqa: E402
from envs.tasks.training import evaluate  # noqa: E402


def row(name: str) -> dict[str, object]:
    """Train ``name`` from scratch and measure it."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        task = load_task(name, cache_dir=Path(cache))
        seconds = time.perf_counter() - start
    params = sum(p.numel() for p in task.model.parameters())
    spec = task.metric_spec
    return {
        "task": name,
        "params": params,
        "fp32 MB": 4 * params / 1e6,
        "train (s)": seconds,
        "metric": spec.name,
        "val": evaluate(task.model, task.val, task.scorer),
        "test": evaluate(task.model, task.test, task.scorer),
        "recipe": f"{task.recipe.epochs} epochs, lr {task.recipe.lr}, batch {task.recipe.batch_size}, "
                  f"{task.recipe.schedule}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated built-in task names")
    args = parser.parse_args()
    frame = pd.DataFrame([row(name) for name in args.tasks.split(",")])
    write_outputs("builtin_tasks", frame, markdown_table(frame), args)


if __name__ == "__main__":
    main()
