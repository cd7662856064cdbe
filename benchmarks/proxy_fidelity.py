"""Proxy fidelity: does the search-time accuracy rank candidates like the accuracy after the final fine-tune?

Samples random policies of a task's search space (with ``--target-fraction``: latency-filled to that fraction
of the baseline latency measured in the run, so every candidate binds); for each, measures validation
accuracy (1) with no fine-tune (BatchNorm recalibrated where the model has BatchNorm), (2) after a few
fine-tune steps (``--rung0-steps``), (3) after a short fine-tune (``--short-steps``), and (4) after the final
fine-tune of the export stage (``--final-epochs``). It also replays the multi-fidelity rule of
``search/fidelity.py`` over the samples in order: every candidate gets score (2); one whose score (2) ranks in
the top ``--promote`` fraction of the scores (2) so far is promoted and gets score (3) instead. Reports the
Spearman rank correlation of each score with (4), and the cost per candidate of each.

    python benchmarks/proxy_fidelity.py [--task lenet5] [--samples 24] [--target-fraction 0.3]
        [--rung0-steps 8] [--short-steps 30] [--promote 0.2] [--final-epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search.export import ExportSettings, finetune_steps  # noqa: E402
from search.latency_fill import LatencyFill  # noqa: E402
from search.searchers import RandomSearcher  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ranks = [pd.Series(x).rank().to_numpy() for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def promotions(scores: list[float], fraction: float) -> np.ndarray:
    """Which candidates, in order, rank in the top ``fraction`` of the scores seen so far (themselves included)."""
    flags = []
    for index, score in enumerate(scores):
        seen = sorted(scores[: index + 1], reverse=True)
        flags.append(score >= seen[max(1, int(fraction * len(seen) + 0.5)) - 1])
    return np.array(flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lenet5")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--short-steps", type=int, default=30)
    parser.add_argument("--rung0-steps", type=int, default=8)
    parser.add_argument("--promote", type=float, default=0.2)
    parser.add_argument("--target-fraction", type=float, default=0.0, help="0: no latency target")
    parser.add_argument("--final-epochs", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = load_task(args.task, progress=True)
    evaluator = Evaluator(task, load_device("cpu-b32"))
    space = SearchSpace(
        tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(), tuple(evaluator.layers)
    )
    searcher = RandomSearcher(space, Budget(), args.seed)
    fill = None
    if args.target_fraction > 0:
        baseline_ms = evaluator.measure_here(task.model).ms
        target_ms = args.target_fraction * baseline_ms
        fill = LatencyFill.for_evaluator(evaluator, space, target_ms, 0.95)
        print(f"baseline {baseline_ms:.2f} ms, target {target_ms:.2f} ms", file=sys.stderr)
    cheap, rung0 = "no fine-tune (BN recal)", f"{args.rung0_steps} fine-tune steps"
    short = f"{args.short_steps} fine-tune steps"
    proxies = {
        cheap: evaluator.refinement(),
        rung0: evaluator.refinement(FinetuneSettings(steps=args.rung0_steps, lr=1e-3)),
        short: evaluator.refinement(FinetuneSettings(steps=args.short_steps, lr=1e-3)),
    }
    final_settings = ExportSettings().finetune  # the export stage's default fine-tune
    final = evaluator.refinement(replace(final_settings, steps=finetune_steps(evaluator, args.final_epochs)))
    rows = []
    for index in range(args.samples):
        policy = searcher.ask().policy
        if fill is not None:
            policy = fill(policy)
        row = {"candidate": index}
        for name, refinement in {**proxies, "final": final}.items():
            start = time.perf_counter()
            model = evaluator.compress(policy, refinement).model
            row[name] = evaluate_accuracy(model, task.val)
            row[f"{name} seconds"] = time.perf_counter() - start
        rows.append(row)
        print(row, file=sys.stderr)
    frame = pd.DataFrame(rows)
    multi = f"multi-fidelity ({rung0}, top {args.promote:.0%} promoted to {args.short_steps})"
    promoted = promotions(frame[rung0].tolist(), args.promote)
    frame[multi] = np.where(promoted, frame[short], frame[rung0])
    frame[f"{multi} seconds"] = frame[f"{rung0} seconds"] + np.where(promoted, frame[f"{short} seconds"], 0.0)
    frame["promoted"] = promoted
    lines = []
    for name in [*proxies, multi]:
        lines.append({
            "proxy": name,
            "spearman vs final": round(spearman(frame[name].to_numpy(), frame["final"].to_numpy()), 3),
            "seconds per candidate (mean)": round(float(frame[f"{name} seconds"].mean()), 3),
            "cost vs no fine-tune": round(float(frame[f"{name} seconds"].mean() / frame[f"{cheap} seconds"].mean()),
                                          2),
        })
    lines.append({"proxy": f"final fine-tune ({args.final_epochs} epochs)", "spearman vs final": 1.0,
                  "seconds per candidate (mean)": round(float(frame["final seconds"].mean()), 3),
                  "cost vs no fine-tune": round(float(frame["final seconds"].mean() / frame[f"{cheap} seconds"].mean()),
                                                2)})
    table = markdown_table(pd.DataFrame(lines))
    target = "" if fill is None else f", latency-filled to {args.target_fraction:.0%} of the baseline latency"
    summary = (f"Final fine-tune: Adam lr {final_settings.lr:g}, {final_settings.lr_schedule}. "
               f"Task {args.task}, {args.samples} random candidates of the default search space{target}; "
               f"{int(promoted.sum())} promoted; final accuracies {frame['final'].min():.3f}-"
               f"{frame['final'].max():.3f}.\n\n{table}")
    write_outputs(f"proxy_fidelity_{args.task}", frame, summary, args)


if __name__ == "__main__":
    main()
