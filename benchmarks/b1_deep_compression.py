"""B1: the Deep Compression LeNet table, side by side with a uniform policy and every searcher.

For each net (lenet300, lenet5), in one run, with the same final fine-tune budget and the same encoder:
(a) the fp32 baseline, (b) Deep Compression's hand-tuned recipe, (c) a uniform policy, (d) each searcher
with a size budget of the recipe's packed bytes / 1.5. A searcher's reported model is the exported Pareto
model with the best *validation* accuracy; its test accuracy is then read off. Goal: the searched model
reaches >= 1.5x the recipe's compression ratio at a test accuracy no lower than the recipe's.

    python benchmarks/b1_deep_compression.py [--trials 150] [--epochs 8] [--searchers random,tpe,nsga2]
        [--prune-rounds 1] [--ranks 1.0] [--saliencies magnitude]

``--prune-rounds`` applies to every row's final fine-tune (iterative pruning, as Deep Compression did);
``--ranks`` and ``--saliencies`` widen the searchers' space (low-rank factors, OBD / Taylor saliency).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from core.policy import Policy  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.discovery import discover_layers  # noqa: E402
from search import run_search  # noqa: E402
from search.runner import RunOutcome  # noqa: E402

TARGET_FACTOR = 1.5


def policy_text(policy: Policy) -> str:
    """Per layer: kept % of weights, bits (``k`` = k-means), kept channels and rank where below 1; the saliency
    and runtime where set."""
    text = " / ".join(
        f"{name} {100 * (1 - c.sparsity):.0f}% {c.bits}b{'k' if c.quantizer == 'kmeans' else ''}"
        + (f" c{c.keep:g}" if c.keep < 1 else "") + (f" r{c.rank:g}" if c.rank < 1 else "")
        for name, c in policy
    )
    text = text if policy.saliency == "magnitude" else f"{text} ({policy.saliency})"
    return f"{text} [{policy.runtime}]" if policy.runtime else text


def _layers(outcome: RunOutcome, rank: int) -> str:
    return policy_text(outcome.models[rank].policy)


def _row(net: str, method: str, outcome: RunOutcome, seconds: float, original: int) -> dict[str, object]:
    if not outcome.models:
        return {"net": net, "method": method, "test_accuracy": float("nan"), "packed_bytes": 0, "ratio": 0.0,
                "layers": "no model within budget", "evaluations": len(outcome.trials), "seconds": seconds}
    best = max(range(len(outcome.models)), key=lambda i: outcome.models[i].val_accuracy)
    model = outcome.models[best]
    kept = outcome.trials[model.trial].result.nonzero_weights
    return {
        "net": net,
        "method": method,
        "test_accuracy": model.test_accuracy,
        "val_accuracy": model.val_accuracy,
        "packed_bytes": model.size_bytes,
        "ratio": original / model.size_bytes,
        "bits_per_kept_weight": round(8 * model.size_bytes / max(1, kept), 2),
        "layers": _layers(outcome, best),
        "evaluations": len(outcome.trials),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--epochs", type=float, default=8.0, help="final fine-tune epochs, the same for every row")
    parser.add_argument("--searchers", default="random,tpe,nsga2")
    parser.add_argument("--nets", default="lenet300,lenet5")
    parser.add_argument("--prune-rounds", type=int, default=1, help="iterative pruning rounds of the final fine-tune")
    parser.add_argument("--ranks", default="1.0", help="low-rank fractions the searchers may pick, e.g. 0.25,0.5,1.0")
    parser.add_argument("--saliencies", default="magnitude", help="pruning criteria, e.g. magnitude,obd,taylor")
    args = parser.parse_args()

    runs = OUT_DIR / "b1_runs"
    shutil.rmtree(runs, ignore_errors=True)
    export = {"finetune_epochs": args.epochs, "max_models": 6, "prune_rounds": args.prune_rounds}
    space = {"channel_pruning": False, "quantizers": ["linear", "kmeans"],
             "ranks": [float(r) for r in args.ranks.split(",")], "saliencies": args.saliencies.split(",")}
    rows = []
    for net in args.nets.split(","):
        def go(name: str, net: str = net, **settings: object) -> tuple[RunOutcome, float]:
            start = time.perf_counter()
            outcome = run_search(task=net, out=runs / f"{net}-{name}", export=export, space=space, **settings)
            return outcome, time.perf_counter() - start

        recipe, seconds = go("recipe", searcher="recipe", searcher_options={"name": "deep-compression"}, trials=1)
        task = load_task(net)
        original = 4 * sum(spec.params for spec in discover_layers(task.model, task.input_shape))
        base = recipe.baseline
        rows.append({"net": net, "method": "fp32 baseline", "test_accuracy": base.test_accuracy,
                     "val_accuracy": base.val_accuracy, "packed_bytes": base.size_bytes,
                     "ratio": original / base.size_bytes, "layers": "fp32", "evaluations": 0, "seconds": 0.0})
        rows.append(_row(net, "Deep Compression recipe", recipe, seconds, original))
        uniform, seconds = go("uniform", searcher="recipe", searcher_options={"name": "uniform"}, trials=1)
        rows.append(_row(net, "uniform (90% sparse, 6-bit k-means)", uniform, seconds, original))
        budget = int(recipe.models[0].size_bytes / TARGET_FACTOR)
        for searcher in args.searchers.split(","):
            outcome, seconds = go(searcher, searcher=searcher, trials=args.trials, budget_mb=f"{budget}B")
            rows.append(_row(net, f"{searcher} (budget {budget} B)", outcome, seconds, original))
        print(pd.DataFrame(rows).to_string(), file=sys.stderr)
    frame = pd.DataFrame(rows)
    table = markdown_table(frame)
    write_outputs("b1_deep_compression", frame, table, args)


if __name__ == "__main__":
    main()
