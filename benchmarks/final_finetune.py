"""Final fine-tune settings: which learning rate and schedule recover the most accuracy in the export stage?

Samples random policies of a task's default search space, latency-filled to each ``--fractions`` of the
baseline latency measured in the run (so that the light and the heavy ends of the front are both covered),
and gives each the export stage's final fine-tune (``--epochs``) under every setting side by side: Adam at
1e-4 constant (the default before this benchmark), 1e-3 constant, 1e-3 cosine and 3e-3 cosine. Reports
the test accuracy per setting and fraction (mean, and the paired difference against the first setting).

    python benchmarks/final_finetune.py [--task resnet] [--samples 6] [--fractions 0.3,0.7] [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search.export import finetune_steps  # noqa: E402
from search.latency_fill import LatencyFill  # noqa: E402
from search.searchers import RandomSearcher  # noqa: E402

SETTINGS = {
    "1e-4 constant": (1e-4, "constant"),
    "1e-3 constant": (1e-3, "constant"),
    "1e-3 cosine": (1e-3, "cosine"),
    "3e-3 cosine": (3e-3, "cosine"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="resnet")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--fractions", default="0.3,0.7")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = load_task(args.task, progress=True)
    evaluator = Evaluator(task, load_device("cpu-b32"))
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers))
    baseline_ms = evaluator.measure_here(task.model).ms
    steps = finetune_steps(evaluator, args.epochs)
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        fill = LatencyFill.for_evaluator(evaluator, space, fraction * baseline_ms, 0.95)
        searcher = RandomSearcher(space, Budget(), args.seed)
        for index in range(args.samples):
            policy = fill(searcher.ask().policy)
            row = {"fraction": fraction, "candidate": index}
            for name, (lr, schedule) in SETTINGS.items():
                refinement = evaluator.refinement(FinetuneSettings(steps=steps, lr=lr, lr_schedule=schedule))
                start = time.perf_counter()
                model = evaluator.compress(policy, refinement).model
                row[f"{name} seconds"] = time.perf_counter() - start
                row[name] = evaluate_accuracy(model, task.test)
            rows.append(row)
            print(row, file=sys.stderr)
    frame = pd.DataFrame(rows)
    first = next(iter(SETTINGS))
    lines = []
    for fraction, group in frame.groupby("fraction"):
        for name in SETTINGS:
            difference = group[name] - group[first]
            lines.append({
                "target": f"{fraction:.0%} of baseline",
                "final fine-tune": name,
                "test acc (mean)": round(float(group[name].mean()), 4),
                "min": round(float(group[name].min()), 4),
                f"vs {first} (mean paired)": round(float(difference.mean()), 4),
                "candidates better": f"{int((difference > 0).sum())}/{len(group)}",
            })
    summary = (f"Task {args.task}: {args.samples} random candidates per target, latency-filled to 95% of it; "
               f"baseline {baseline_ms:.2f} ms; final fine-tune {args.epochs} epochs ({steps} steps).\n\n"
               + markdown_table(pd.DataFrame(lines)))
    write_outputs(f"final_finetune_{args.task}", frame, summary, args)


if __name__ == "__main__":
    main()
