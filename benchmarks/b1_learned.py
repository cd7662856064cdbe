"""B1 extended: learned sparsity on the LeNets, alone and under the searched per-layer policy, over several seeds.

For each net (LeNet-300-100 and the Caffe LeNet-5, 20-50-800-500) and seed, in one run, with the same data
(MNIST-5k), the same final fine-tune and the same encoder, the rows are: the fp32 baseline, Deep Compression's
recipe, iterative pruning of that recipe with weight rewinding (Frankle and Carbin's schedule, rewound to the
trained weights), a lottery ticket (the same, rewound to the untrained weights, each round as long as the task's
own training: Frankle and Carbin's schedule from scratch), the searched policy (NSGA-II with a size budget of the
recipe's bytes / 1.5, and again at the goal's size: fp32 bytes / 150 for LeNet-5, / 64 for LeNet-300-100), each
learned method alone (its recipe in configs/recipes/) and each learned method under the searched policies at the
goal's size (``export.learned``: the search runs on the trained result, warm-started with the method's own
per-layer choices; the ``unseeded`` rows run the same without that warm start); the goal rows may prune up to 99% of a
layer in steps of 1% (``space.sparsity_max``, ``sparsity_step``), the others up to the default 95% in steps of 5%.
A searched row reports the exported Pareto model with the best validation accuracy. Per-layer kept % is read from
the exported file (what the learned method removed included), bits from its header. Medians and ranges over the
seeds are in the summary table.

    python benchmarks/b1_learned.py [--nets lenet300,lenet5] [--seeds 0,1,2] [--trials 150] [--epochs 8]
        [--learned variational_dropout,group_lasso,l0_gates,soft_sharing,bayesian] [--learned-epochs 10]
        [--learned-strength 1.0] [--strengths l0_gates=3] [--combined variational_dropout,l0_gates]
        [--rows rewind,ticket,search,alone,combined,unseeded] [--out b1_learned]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from core.errors import UsageError  # noqa: E402
from core.policy import MAX_SPARSITY, Policy  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.discovery import discover_layers  # noqa: E402
from methods.layer_kinds import weight_keys  # noqa: E402
from methods.packing import unpack  # noqa: E402
from search import load_model, run_search  # noqa: E402
from search.runner import RunOutcome  # noqa: E402

TARGET_FACTOR = 1.5
GOAL_RATIOS = {"lenet5": 150.0, "lenet300": 64.0}
"""The issue's goal ratios: the searched rows also run at the size these give, alone and on a learned model."""
RECIPES = {"variational_dropout": "variational-dropout", "group_lasso": "group-lasso", "l0_gates": "l0-gates",
           "soft_sharing": "soft-sharing", "bayesian": "bayesian"}


def layer_text(run_dir: Path, model_file: str, net: str) -> str:
    """Per layer of the exported file: kept % of the original layer's weights (removed channels count as removed),
    then its bits (``k`` = k-means, ``h`` = hashed) from the file's header."""
    task = load_task(net)
    original = {spec.name: spec for spec in discover_layers(task.model, task.input_shape)}
    model = load_model(run_dir / model_file)
    meta, _ = unpack((run_dir / model_file).read_bytes())
    policy = Policy.from_dict(meta["policy"])
    parts = []
    for name in original:
        total = sum(task.model.get_parameter(k).numel() for k in weight_keys(task.model, name))
        kept = sum(int(torch.count_nonzero(model.get_parameter(k))) for k in weight_keys(model, name))
        choice = policy[name]
        mark = {"kmeans": "k", "hashed": "h"}.get(choice.quantizer, "")
        code = "fp32" if not choice.quantized else f"{choice.bits}b{mark}"
        parts.append(f"{name} {100 * kept / total:.1f}% {code}")
    return " / ".join(parts)


def row(net: str, seed: int, method: str, outcome: RunOutcome, seconds: float, original: int,
        task: str | None = None) -> dict[str, object]:
    """The row of one run: its most accurate (on validation) exported model, with its latency and spread
    (``task``: the run's task when it is not ``net``, e.g. a student of it)."""
    base = {"net": net, "seed": seed, "method": method, "seconds": round(seconds, 1)}
    if not outcome.models:
        return {**base, "test_accuracy": float("nan"), "packed_bytes": 0, "ratio": 0.0, "layers": "no model"}
    model = max(outcome.models, key=lambda m: m.val_accuracy)
    return {**base, "test_accuracy": model.test_accuracy, "val_accuracy": model.val_accuracy,
            "packed_bytes": model.size_bytes, "ratio": round(original / model.size_bytes, 1),
            "latency_ms": round(model.latency_ms, 3), "latency_spread_ms": round(model.latency_spread_ms, 3),
            "layers": layer_text(outcome.run_dir, model.model_file, task or net)}


def summary(frame: pd.DataFrame, medians: Sequence[str] = ()) -> pd.DataFrame:
    """Per net and method: median test accuracy and ratio over the seeds, with their ranges, the median of each
    column in ``medians`` (e.g. ``packed_bytes``, ``latency_ms``), and the median time."""
    rows = []
    for (net, method), group in frame.groupby(["net", "method"], sort=False):
        acc, ratio = group["test_accuracy"], group["ratio"]
        rows.append({"net": net, "method": method, "seeds": len(group),
                     "test acc (median)": round(float(acc.median()), 4),
                     "test acc range": f"{acc.min():.3f}-{acc.max():.3f}",
                     "ratio (median)": round(float(ratio.median()), 1),
                     "ratio range": f"{ratio.min():.0f}-{ratio.max():.0f}",
                     **{f"{column} (median)": round(float(group[column].median()), 3) for column in medians},
                     "seconds (median)": round(float(group["seconds"].median()), 1)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet300,lenet5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=150, help="evaluations of each searched row")
    parser.add_argument("--epochs", type=float, default=8.0, help="final fine-tune epochs, the same for every row")
    parser.add_argument("--learned", default=",".join(RECIPES), help="learned methods run alone")
    parser.add_argument("--combined", default=",".join(RECIPES), help="learned methods run under searched policies")
    parser.add_argument("--learned-epochs", type=float, default=10.0)
    parser.add_argument("--learned-strength", type=float, default=1.0, help="export.learned_strength of every method")
    parser.add_argument("--strengths", default="", help="per-method overrides, e.g. l0_gates=3,variational_dropout=0.5")
    parser.add_argument("--rows", default="rewind,ticket,search,alone,combined,unseeded",
                        help="which row families to run (unseeded: the combined rows without the learned seed)")
    parser.add_argument("--out", default="b1_learned", help="name of the written out/<name>.csv and .md")
    args = parser.parse_args()

    runs = OUT_DIR / "b1_learned_runs"
    shutil.rmtree(runs, ignore_errors=True)
    families = set(args.rows.split(","))
    strengths = {name: float(value) for name, value in (item.split("=") for item in args.strengths.split(",") if item)}
    export = {"finetune_epochs": args.epochs, "max_models": 6, "learned_epochs": args.learned_epochs,
              "learned_strength": args.learned_strength}
    space = {"channel_pruning": False, "quantizers": ["linear", "kmeans"]}
    deep = {**space, "sparsity_max": MAX_SPARSITY, "sparsity_step": 0.01}  # the goal rows: up to 99% of a layer
    rows: list[dict[str, object]] = []
    for net in args.nets.split(","):
        task = load_task(net)
        original = 4 * sum(spec.params for spec in discover_layers(task.model, task.input_shape))
        for seed in (int(s) for s in args.seeds.split(",")):
            def go(name: str, net: str = net, seed: int = seed, export_extra: dict | None = None,
                   **settings: object) -> tuple[RunOutcome, float]:
                start = time.perf_counter()
                settings.setdefault("space", space)
                outcome = run_search(task=net, out=runs / f"{net}-{seed}-{name}", seed=seed,
                                     export={**export, **(export_extra or {})}, **settings)
                return outcome, time.perf_counter() - start

            recipe, seconds = go("recipe", searcher="recipe", searcher_options={"name": "deep-compression"}, trials=1)
            baseline = recipe.baseline
            rows.append({"net": net, "seed": seed, "method": "fp32 baseline", "test_accuracy": baseline.test_accuracy,
                         "val_accuracy": baseline.val_accuracy, "packed_bytes": baseline.size_bytes,
                         "ratio": round(original / baseline.size_bytes, 1), "layers": "fp32", "seconds": 0.0})
            rows.append(row(net, seed, "Deep Compression recipe", recipe, seconds, original))
            if "rewind" in families:
                outcome, seconds = go("rewind", searcher="recipe", searcher_options={"name": "deep-compression"},
                                      trials=1, export_extra={"prune_rounds": 3, "rewind": "weights"})
                rows.append(row(net, seed, "DC recipe, 3 rounds of IMP with weight rewinding", outcome, seconds,
                                original))
            if "ticket" in families:  # from scratch: each round trains as long as the task's own training
                recipe_of = task.recipe
                outcome, seconds = go("ticket", searcher="recipe", searcher_options={"name": "deep-compression"},
                                      trials=1, export_extra={"prune_rounds": 3, "rewind": "init",
                                                              "finetune_epochs": 3 * recipe_of.epochs,
                                                              "finetune_lr": recipe_of.lr})
                rows.append(row(net, seed, "lottery ticket: DC table, 3 rounds of IMP rewound to initialisation",
                                outcome, seconds, original))
            budget = f"{int(recipe.models[0].size_bytes / TARGET_FACTOR)}B"
            goal = f"{int(original / GOAL_RATIOS.get(net, 150.0))}B"
            at_budget = f"DC bytes / {TARGET_FACTOR:g}"  # row labels name the rule, not the seed's bytes
            at_goal = f"fp32 / {GOAL_RATIOS.get(net, 150.0):g}"
            if "search" in families:
                outcome, seconds = go("nsga2", searcher="nsga2", trials=args.trials, budget_mb=budget)
                rows.append(row(net, seed, f"searched (nsga2, {at_budget})", outcome, seconds, original))
                try:
                    outcome, seconds = go("nsga2-goal", searcher="nsga2", trials=args.trials, budget_mb=goal,
                                          space=deep)
                    rows.append(row(net, seed, f"searched (nsga2, {at_goal})", outcome, seconds, original))
                except UsageError as exc:  # the plain space cannot reach the goal's size
                    rows.append({"net": net, "seed": seed, "method": f"searched (nsga2, {at_goal})",
                                 "test_accuracy": float("nan"), "packed_bytes": 0, "ratio": 0.0,
                                 "layers": f"unreachable: {exc}", "seconds": 0.0})
            for method in args.learned.split(",") if "alone" in families else ():
                outcome, seconds = go(method, searcher="recipe", searcher_options={"name": RECIPES[method]}, trials=1,
                                      export_extra={"learned_strength": strengths.get(method, args.learned_strength)})
                rows.append(row(net, seed, f"{method} alone", outcome, seconds, original))
            combined = [(method, True) for method in args.combined.split(",") if "combined" in families]
            combined += [(method, False) for method in args.combined.split(",") if "unseeded" in families]
            for method, seeded in combined:
                tag = "" if seeded else ", no learned seed"
                outcome, seconds = go(f"nsga2-{method}{'' if seeded else '-unseeded'}", searcher="nsga2",
                                      trials=args.trials, budget_mb=goal, space={**deep, "learned_seed": seeded},
                                      export_extra={"learned": method,
                                                    "learned_strength": strengths.get(method, args.learned_strength)})
                rows.append(row(net, seed, f"{method} + searched (nsga2, {at_goal}{tag})", outcome, seconds,
                                original))
            frame = pd.DataFrame(rows)  # written after every seed, so a cut-off run keeps what it measured
            write_outputs(args.out, frame, markdown_table(summary(frame)) + "\n\nPer seed:\n\n" +
                          markdown_table(frame), args)


if __name__ == "__main__":
    main()
