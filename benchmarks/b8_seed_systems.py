"""B8: the seed notes' systems side by side with the searched policy, on the same data, split and encoder.

For each net and seed, in one run: the fp32 baseline, Deep Compression's recipe, the searched policy (NSGA-II at
the recipe's bytes / 1.5, the default space with k-means added), HashedNets (Chen et al. 2015: every layer hashed
into 1/8 as many shared values, its recipe), HashedNets searched (the same budget, ``hashed`` as the only code:
the searchers pick each layer's sparsity and hashing factor), Net-Trim (Aghasi et al. 2016: Deep Compression's
per-layer table with Net-Trim choosing and refitting the kept weights instead of magnitude, its recipe) and Net-Trim
searched (the same budget, ``net_trim`` as the only criterion), early-bird tickets (You et al. 2020, its recipe:
half the channels, 8-bit codes), once-for-all (Cai et al. 2020: its recipe, the supernet's half-width sub-network
at 8 bits, and ``--ofa`` searched at the same budget), LassoNet (Lemhadri et al. 2021, its recipe: a quarter of the
input pixels, 8-bit codes; LeNet-300-100 only) and the mimic student (Ba and Caruana 2014: the built-in
``<net>-mimic`` task, fp32) beside the same student trained on labels (``<net>-student``); their ratio is to the
teacher's fp32 bytes, as is the static hypernetwork's (Ha et al. 2016: the built-in ``<net>-hyper`` task, fp32:
one shared generator and per-slice embeddings instead of the convolution kernels; LeNet-5 and the ResNet). Every
row gets the same final fine-tune. A searched
row reports its exported Pareto model with the best validation accuracy. Columns: test accuracy, packed bytes,
ratio to fp32, the exported model's latency (median and spread over the timing repeats, batch 1 on this machine)
and the row's wall time (search, export and fine-tune).

    python benchmarks/b8_seed_systems.py [--nets lenet300,lenet5] [--seeds 0,1,2] [--trials 60] [--epochs 8]
        [--rows recipe,search,hashed,hashed-search,net-trim,net-trim-search,early-bird,ofa,ofa-search,lassonet,
        mimic,student,hyper] [--out b8_seed_systems]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.b1_learned import row, summary  # noqa: E402
from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from envs.tasks import TASK_NAMES, load_task  # noqa: E402
from methods.discovery import discover_layers  # noqa: E402
from search import run_search  # noqa: E402
from search.config import once_for_all  # noqa: E402
from search.runner import RunOutcome  # noqa: E402

TARGET_FACTOR = 1.5
ROWS = ("recipe", "search", "hashed", "hashed-search", "net-trim", "net-trim-search", "early-bird", "ofa",
        "ofa-search", "lassonet", "mimic", "student", "hyper")
INPUT_SELECTION = {"lenet300"}
"""Nets whose first layer is a Linear over the pixels (LassoNet applies)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet300,lenet5,resnet")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=60, help="evaluations of each searched row")
    parser.add_argument("--epochs", type=float, default=8.0, help="final fine-tune epochs, the same for every row")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows to run besides fp32")
    parser.add_argument("--out", default="b8_seed_systems", help="name of the written out/<name>.csv and .md")
    args = parser.parse_args()

    runs = OUT_DIR / "b8_runs"
    shutil.rmtree(runs, ignore_errors=True)
    wanted = set(args.rows.split(","))
    export = {"finetune_epochs": args.epochs, "max_models": 6}
    space = {"channel_pruning": False, "quantizers": ["linear", "kmeans"]}
    rows: list[dict[str, object]] = []
    for net in args.nets.split(","):
        task = load_task(net)
        original = 4 * sum(spec.params for spec in discover_layers(task.model, task.input_shape))
        for seed in (int(s) for s in args.seeds.split(",")):
            def go(name: str, net: str = net, seed: int = seed, **settings: object) -> tuple[RunOutcome, float]:
                start = time.perf_counter()
                settings.setdefault("space", space)
                settings.setdefault("task", net)
                settings.setdefault("export", export)
                outcome = run_search(out=runs / f"{net}-{seed}-{name}", seed=seed, **settings)
                return outcome, time.perf_counter() - start

            dc = "deep-compression" if net in ("lenet300", "lenet5") else "uniform"  # Han et al. tabled the LeNets
            recipe, seconds = go("recipe", searcher="recipe", searcher_options={"name": dc}, trials=1)
            baseline = recipe.baseline
            rows.append({"net": net, "seed": seed, "method": "fp32 baseline", "test_accuracy": baseline.test_accuracy,
                         "packed_bytes": baseline.size_bytes, "ratio": round(original / baseline.size_bytes, 1),
                         "latency_ms": round(baseline.latency_ms, 3), "layers": "fp32", "seconds": 0.0})
            rows.append(row(net, seed, "Deep Compression recipe" if dc == "deep-compression" else
                            "uniform recipe (90% sparse, 6-bit k-means)", recipe, seconds, original))
            budget = f"{int(recipe.models[0].size_bytes / TARGET_FACTOR)}B"
            rule = f"DC bytes / {TARGET_FACTOR:g}"  # row labels name the rule, not the seed's bytes
            runs_wanted = [
                ("search", f"searched (nsga2, {rule})", {"searcher": "nsga2", "trials": args.trials,
                                                          "budget_mb": budget}),
                ("hashed", "HashedNets recipe (1/8)", {"searcher": "recipe", "trials": 1,
                                                        "searcher_options": {"name": "hashednets"}}),
                ("hashed-search", f"HashedNets searched (nsga2, {rule})",
                 {"searcher": "nsga2", "trials": args.trials, "budget_mb": budget,
                  "space": {**space, "quantizers": ["hashed"]}}),
                ("net-trim", "Net-Trim recipe (DC table)", {"searcher": "recipe", "trials": 1,
                                                             "searcher_options": {"name": "net-trim"}}),
                ("net-trim-search", f"Net-Trim searched (nsga2, {rule})",
                 {"searcher": "nsga2", "trials": args.trials, "budget_mb": budget,
                  "space": {**space, "saliencies": ["net_trim"]}}),
                ("early-bird", "early-bird ticket recipe (half the channels, 8-bit)",
                 {"searcher": "recipe", "trials": 1, "searcher_options": {"name": "early-bird"}}),
                ("ofa", "once-for-all recipe (the supernet's half-width sub-network, 8-bit)",
                 {"searcher": "recipe", "trials": 1, "searcher_options": {"name": "ofa"}}),
                ("ofa-search", f"once-for-all searched (--ofa, nsga2, {rule})",
                 once_for_all({"searcher": "nsga2", "trials": args.trials, "budget_mb": budget, "export": dict(export),
                               "space": {**space, "channel_pruning": True}})),
                ("mimic", "mimic student (fp32)", {"task": f"{net}-mimic", "searcher": "recipe", "trials": 1,
                                                   "searcher_options": {"name": "fp32"}}),
                ("student", "same student on labels (fp32)", {"task": f"{net}-student", "searcher": "recipe",
                                                             "trials": 1, "searcher_options": {"name": "fp32"}}),
            ]
            if f"{net}-hyper" in TASK_NAMES:
                runs_wanted.append(("hyper", "hypernetwork (Ha et al. 2016, fp32)",
                                    {"task": f"{net}-hyper", "searcher": "recipe", "trials": 1,
                                     "searcher_options": {"name": "fp32"}}))
            if net in INPUT_SELECTION:
                runs_wanted.append(("lassonet", "LassoNet recipe (a quarter of the pixels, 8-bit)",
                                    {"searcher": "recipe", "trials": 1, "searcher_options": {"name": "lassonet"}}))
            for key, method, settings in runs_wanted:
                if key in wanted:
                    outcome, seconds = go(key, **settings)
                    task_name = settings.get("task")
                    rows.append(row(net, seed, method, outcome, seconds, original,
                                    task=task_name if isinstance(task_name, str) else None))
            frame = pd.DataFrame(rows)  # written after every seed, so a cut-off run keeps what it measured
            table = summary(frame, medians=("packed_bytes", "latency_ms"))
            write_outputs(args.out, frame, markdown_table(table) + "\n\nPer seed:\n\n" +
                          markdown_table(frame), args)


if __name__ == "__main__":
    main()
