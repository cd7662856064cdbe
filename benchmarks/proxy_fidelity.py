"""Proxy fidelity: does the search-time accuracy rank candidates like the accuracy after the final fine-tune?

Samples random policies of a task's search space; for each, measures validation accuracy (1) as the search
sees it by default (no fine-tune; BatchNorm recalibrated where the model has BatchNorm), (2) after a short
in-the-loop fine-tune (``--short-steps``), and (3) after the final fine-tune of the export stage
(``--final-epochs``). Reports the Spearman rank correlation of (1) and (2) with (3), and the cost per
candidate of each proxy.

    python benchmarks/proxy_fidelity.py [--task lenet5] [--samples 24] [--short-steps 30] [--final-epochs 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, median, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search.export import finetune_steps  # noqa: E402
from search.searchers import RandomSearcher  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ranks = [pd.Series(x).rank().to_numpy() for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lenet5")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--short-steps", type=int, default=30)
    parser.add_argument("--final-epochs", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = load_task(args.task, progress=True)
    evaluator = Evaluator(task, load_device("cpu-b32"))
    space = SearchSpace(
        tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(), tuple(evaluator.layers)
    )
    searcher = RandomSearcher(space, Budget(), args.seed)
    proxies = {
        "default (BN recal, no fine-tune)": evaluator.refinement(),
        f"short fine-tune ({args.short_steps} steps)": evaluator.refinement(
            FinetuneSettings(steps=args.short_steps, lr=1e-3)
        ),
    }
    final = evaluator.refinement(FinetuneSettings(steps=finetune_steps(evaluator, args.final_epochs), lr=1e-4))
    rows = []
    for index in range(args.samples):
        policy = searcher.ask().policy
        row = {"candidate": index}
        for name, refinement in {**proxies, "final": final}.items():
            start = time.perf_counter()
            model = evaluator.compress(policy, refinement).model
            row[name] = evaluate_accuracy(model, task.val)
            row[f"{name} seconds"] = time.perf_counter() - start
        rows.append(row)
        print(row, file=sys.stderr)
    frame = pd.DataFrame(rows)
    lines = []
    for name in proxies:
        lines.append({
            "proxy": name,
            "spearman vs final": round(spearman(frame[name].to_numpy(), frame["final"].to_numpy()), 3),
            "seconds per candidate (median)": round(median(frame[f"{name} seconds"]), 3),
        })
    lines.append({"proxy": f"final fine-tune ({args.final_epochs} epochs)", "spearman vs final": 1.0,
                  "seconds per candidate (median)": round(median(frame["final seconds"]), 3)})
    table = markdown_table(pd.DataFrame(lines))
    summary = f"Task {args.task}, {args.samples} random candidates of the default search space.\n\n{table}"
    write_outputs(f"proxy_fidelity_{args.task}", frame, summary, args)


if __name__ == "__main__":
    main()
