"""B7: search quality where latency budgets bind -- searched models against uniform and global pruning.

For each task on a device profile whose runtime is searched (default ``cpu-any``: eager and int8 PyTorch, fp32
and int8 ONNX Runtime), the latency of the original model on the profile's default runtime (eager fp32) is
measured first; the targets are fractions of it (default 50%, 30% and 15%). For each target:

* ``baseline``: the original model's test accuracy and latency;
* ``uniform`` and ``torch-pruning global magnitude`` (as in ``b2_latency.py``), each on its best runtime: the
  widths are bisected on every runtime the device can run (one probe rules out a runtime on which the widest
  widths found so far miss the target), the runtime that keeps the most channels is fine-tuned (the export
  stage's default final fine-tune for ``--epochs``) and measured;
* each searcher, once per seed: ``search.run_search`` with the project's defaults (runtime searched per
  candidate, uniform seeds, budget repair, screening fine-tune with multi-fidelity promotion, measured latency),
  the target as its latency budget, at most ``--max-models`` exported with the same final fine-tune.

Per search, from its run folder: the test accuracy of the exported model with the best validation accuracy
(pareto.csv; each is within the target), its latency and runtime; the share of candidates within budget
(trials.csv); the agreement of search and export latency (median over exported models of |search - export| /
export); and how many exported files meet the target when decoded (``search.load_model``) and timed again in a
fresh timing process.

    python benchmarks/b7_binding_budgets.py [--tasks resnet,mobilenet] [--device cpu-any]
        [--targets 0.5,0.3,0.15] [--seeds 0,1,2] [--trials 20] [--searchers tpe] [--epochs 2] [--max-models 3]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.b2_latency import (  # noqa: E402
    SAFETY,
    final_finetune,
    fixed_model,
    global_policy,
    probe_ms,
    uniform_policy,
)
from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from core.errors import UsageError  # noqa: E402
from core.policy import Policy  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from envs.timing import Latency  # noqa: E402
from search import run_search  # noqa: E402
from search.archive import ARCHIVE_FILE  # noqa: E402
from search.loading import load_model  # noqa: E402
from search.prepared import usable_runtimes  # noqa: E402

NAME = "b7_binding_budgets"
FIXED: dict[str, Callable[..., Policy]] = {"uniform": uniform_policy, "torch-pruning global": global_policy}
"""Fixed methods: ``choose(evaluator, target_ms, runtime)`` gives the widest policy within the target."""
BASELINE_MEASUREMENTS = 3
"""Measurements of the original model's latency (the median counts)."""
AGREEMENT_GOAL = 0.05
"""Median |search - export| / export latency of the exported models."""
FRESH_GOAL = 0.99
"""Share of exported models that meet the target when timed again in a fresh process."""


def baseline_latency(evaluator: Evaluator) -> tuple[Latency, list[float]]:
    """The original model's latency on the profile's default runtime: the median measurement, and all of them."""
    runs = sorted((evaluator.measure_here(evaluator.task.model) for _ in range(BASELINE_MEASUREMENTS)),
                  key=lambda latency: latency.ms)
    return runs[len(runs) // 2], [latency.ms for latency in runs]


def kept_share(evaluator: Evaluator, policy: Policy) -> float:
    """Fraction of the model's prunable channels that ``policy`` keeps."""
    total = sum(group.channels for group in evaluator.groups)
    return sum(policy[group.leader].keep * group.channels for group in evaluator.groups) / total


def fixed_on_best_runtime(
    evaluator: Evaluator, choose: Callable[..., Policy], runtimes: tuple[str, ...], target: float, epochs: float
) -> dict:
    """``choose``'s policy on the runtime where it keeps the most channels within ``target`` (bisected on every
    runtime at the first attempt's aim), fine-tuned with the final fine-tune and measured.

    A runtime on which the widest widths found so far already miss the aim cannot keep more (latency grows with
    width): one probe rules it out instead of a bisection.
    """
    start = time.perf_counter()
    aim = SAFETY * target
    best: Policy | None = None
    kept: dict[str, float] = {}
    for runtime in runtimes:
        if best is not None and probe_ms(evaluator, replace(best, runtime=runtime)) > aim:
            continue
        policy = choose(evaluator, aim, runtime)
        kept[runtime] = kept_share(evaluator, policy)
        if best is None or kept[runtime] > kept[best.runtime]:  # ties: the earlier runtime, the default first
            best = policy
    shares = (f"{r} {kept[r]:.0%}" if r in kept else f"{r} narrower" for r in runtimes)
    print(f"  kept channels by runtime: {', '.join(shares)}", file=sys.stderr)
    compressed, result = fixed_model(evaluator, partial(choose, runtime=best.runtime), target,
                                     final_finetune(evaluator, epochs))
    return {"test_accuracy": evaluator.test_accuracy(compressed), "latency_ms": result.latency_ms,
            "runtime": result.runtime, "kept_channels": kept[best.runtime], "seconds": time.perf_counter() - start}


def _runtime(value: object) -> str | None:
    """pareto.csv's runtime cell as a runtime name (``None``: the profile's default)."""
    return value if isinstance(value, str) and value else None


def search_once(
    evaluator: Evaluator, args: argparse.Namespace, searcher: str, seed: int, target: float, folder: Path
) -> tuple[dict, list[dict]]:
    """One search with the project's defaults and ``target`` as its budget: the per-seed row, and one record
    per exported model (search, export and fresh latency)."""
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    try:
        run_search(task=evaluator.task.name, device=args.device, searcher=searcher, trials=args.trials, seed=seed,
                   target_latency=f"{target}ms", out=folder,
                   export={"finetune_epochs": args.epochs, "max_models": args.max_models})
    except UsageError as exc:  # a target below the fastest model the space allows: no search, an empty front
        print(f"b7 {evaluator.task.name} target {target:.2f} ms {searcher} seed {seed}: {exc}", file=sys.stderr)
        return {"seed": seed, "exported": 0, "within_budget": math.nan, "agreement": math.nan, "fresh_pass": 0,
                "seconds": time.perf_counter() - start, "error": str(exc)}, []
    trials = pd.read_csv(folder / ARCHIVE_FILE)
    pareto = pd.read_csv(folder / "pareto.csv")
    search_ms = dict(zip(trials["trial"], trials["latency_ms"], strict=True))
    within = float((trials["feasible"].astype(str).str.lower() == "true").mean())
    models = []
    for item in pareto.itertuples(index=False):
        fresh = evaluator.fresh_latency(load_model(folder / item.model_file), _runtime(item.runtime))
        models.append({"trial": item.trial, "runtime": item.runtime, "val_accuracy": item.val_accuracy,
                       "test_accuracy": item.test_accuracy,
                       "search_ms": search_ms[item.trial], "export_ms": item.latency_ms, "fresh_ms": fresh.ms,
                       "agreement": abs(search_ms[item.trial] - item.latency_ms) / item.latency_ms,
                       "fresh_meets_target": fresh.ms <= target})
    seconds = time.perf_counter() - start  # the search, its export and the re-timing
    row = {"seed": seed, "exported": len(models), "within_budget": within,
           "agreement": statistics.median(m["agreement"] for m in models) if models else math.nan,
           "fresh_pass": sum(m["fresh_meets_target"] for m in models), "seconds": seconds}
    if models:
        best = max(models, key=lambda m: m["val_accuracy"])  # chosen on val, reported on test
        row |= {"test_accuracy": best["test_accuracy"], "latency_ms": best["export_ms"], "runtime": best["runtime"]}
    print(f"b7 {evaluator.task.name} target {target:.2f} ms {searcher} seed {seed}: best test accuracy "
          f"{row.get('test_accuracy', math.nan):.4f} ({len(models)} exported), {seconds:.0f} s", file=sys.stderr)
    return row, models


def _fixed_cell(row: pd.Series) -> str:
    return f"{row.test_accuracy:.4f} ({row.runtime}, {row.latency_ms:.1f} ms)"


def summary_table(frame: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per task, target and searcher (see the module docstring)."""
    out = []
    for (task, target, searcher), runs in frame[frame.seed.notna()].groupby(["task", "target", "method"],
                                                                           sort=False):
        fixed = frame[(frame.task == task) & (frame.target == target)].set_index("method")
        exported = models[(models.task == task) & (models.target == target) & (models.method == searcher)]
        accuracy = runs.test_accuracy.dropna()
        out.append({
            "task": task, "target": f"{target:.0%} ({runs.target_ms.iloc[0]:.1f} ms)", "searcher": searcher,
            "baseline acc": f"{fixed.loc['baseline', 'test_accuracy']:.4f}",
            "uniform acc (runtime, ms)": _fixed_cell(fixed.loc["uniform"]),
            "TP acc (runtime, ms)": _fixed_cell(fixed.loc["torch-pruning global"]),
            "searched best acc, mean (min-max)": (f"{accuracy.mean():.4f} ({accuracy.min():.4f}-{accuracy.max():.4f})"
                                                  if len(accuracy) else "-"),
            "non-empty fronts": f"{int((runs.exported > 0).sum())}/{len(runs)}",
            "within budget": f"{runs.within_budget.mean():.0%}",
            "search/export agreement": f"{100 * exported.agreement.median():.1f}%" if len(exported) else "-",
            "fresh re-timing": f"{int(exported.fresh_meets_target.sum())}/{len(exported)}",
        })
    return pd.DataFrame(out)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def goal_checks(frame: pd.DataFrame, models: pd.DataFrame) -> list[str]:
    """The benchmark's goals, one line each (a goal whose task or target was not run is left out)."""
    lines = []
    empty, checked = [], 0
    for (task, target, searcher), runs in frame[frame.seed.notna()].groupby(["task", "target", "method"],
                                                                           sort=False):
        fixed = frame[(frame.task == task) & (frame.target == target)].set_index("method")
        accuracy = runs.test_accuracy.mean()
        if fixed.loc["uniform", "latency_ms"] <= fixed.loc["uniform", "target_ms"]:
            checked += 1
            empty += [f"{task} {target:.0%} {searcher} seed {int(s)}" for s in runs.seed[runs.exported == 0]]
        if task == "resnet" and math.isclose(target, 0.3):
            gap = fixed.loc["baseline", "test_accuracy"] - accuracy
            lines.append(f"{_verdict(gap <= 0.015)}: resnet at 30% within 1.5 points of the baseline ({searcher}: "
                         f"{100 * gap:+.2f} points below)")
        if any(math.isclose(target, t) for t in (0.3, 0.15)):
            gain = accuracy - fixed.loc["uniform", "test_accuracy"]
            lines.append(f"{_verdict(gain >= 0.01)}: {task} at {target:.0%}, searched beats uniform by >= 1 point "
                         f"({searcher}: {100 * gain:+.2f} points)")
    if checked:
        detail = "; empty: " + ", ".join(empty) if empty else ""
        lines.insert(0, f"{_verdict(not empty)}: front never empty where uniform reaches the target "
                        f"({checked} task/target/searcher cells{detail})")
    if len(models):
        agreement, fresh = models.agreement.median(), models.fresh_meets_target.mean()
        lines.append(f"{_verdict(agreement <= AGREEMENT_GOAL)}: search/export latency agreement within "
                     f"{AGREEMENT_GOAL:.0%} (median {100 * agreement:.1f}% over {len(models)} exported models)")
        lines.append(f"{_verdict(fresh >= FRESH_GOAL)}: {FRESH_GOAL:.0%} of exports meet the target in a fresh "
                     f"process ({int(models.fresh_meets_target.sum())}/{len(models)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="resnet,mobilenet")
    parser.add_argument("--device", default="cpu-any")
    parser.add_argument("--targets", default="0.5,0.3,0.15", help="latency targets as fractions of the fp32 latency")
    parser.add_argument("--seeds", default="0,1,2", help="one search per seed (and searcher)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--searchers", default="tpe")
    parser.add_argument("--epochs", type=float, default=2.0, help="final fine-tune epochs, the same for every row")
    parser.add_argument("--max-models", type=int, default=3, help="most models each search exports")
    args = parser.parse_args()

    device = load_device(args.device)
    rows, records, notes = [], [], []
    for task_name in args.tasks.split(","):
        task = load_task(task_name, progress=True)
        evaluator = Evaluator(task, device)
        try:
            baseline, runs = baseline_latency(evaluator)
            accuracy = evaluate_accuracy(task.model, task.test)
            runtimes = usable_runtimes(evaluator)
            notes.append(f"{task_name}: original model test accuracy {accuracy:.4f}, latency {baseline.ms:.2f} ms "
                         f"on {device.runtime} (median of {len(runs)}: {', '.join(f'{ms:.2f}' for ms in runs)} ms; "
                         f"its spread {baseline.spread_ms:.2f} ms); runtimes {', '.join(runtimes)}")
            for fraction in (float(f) for f in args.targets.split(",")):
                target = fraction * baseline.ms
                cell = {"task": task_name, "target": fraction, "target_ms": target}
                rows.append({**cell, "method": "baseline", "test_accuracy": accuracy, "latency_ms": baseline.ms,
                             "runtime": device.runtime})
                for method, choose in FIXED.items():
                    rows.append({**cell, "method": method,
                                 **fixed_on_best_runtime(evaluator, choose, runtimes, target, args.epochs)})
                    print(rows[-1], file=sys.stderr)
                for searcher in args.searchers.split(","):
                    for seed in (int(s) for s in args.seeds.split(",")):
                        folder = OUT_DIR / f"{NAME}_runs" / f"{task_name}-{fraction:g}-{searcher}-seed{seed}"
                        row, models = search_once(evaluator, args, searcher, seed, target, folder)
                        rows.append({**cell, "method": searcher, **row})
                        records += [{**cell, "method": searcher, "seed": seed, **m} for m in models]
        finally:
            evaluator.close()
    frame = pd.DataFrame(rows)
    frame["meets_target"] = frame["latency_ms"] <= frame["target_ms"]
    models = pd.DataFrame(records, columns=["task", "target", "method", "seed", "agreement", "fresh_meets_target"]
                          if not records else None)
    OUT_DIR.mkdir(exist_ok=True)
    models.to_csv(OUT_DIR / f"{NAME}_models.csv", index=False)
    checks = goal_checks(frame, models)
    summary = (f"Device {device.name} ({device.description or device.runtime}); final fine-tune {args.epochs:g} "
               f"epochs (the export default) for every row; {args.trials} trials per search.\n\n"
               + "\n".join(f"- {note}" for note in notes)
               + f"\n\n{markdown_table(summary_table(frame, models))}\n\nGoal checks:\n\n"
               + "\n".join(f"- {line}" for line in checks)
               + f"\n\nEvery row (searched: the best exported model of each seed):\n\n{markdown_table(frame)}")
    write_outputs(NAME, frame, summary, args)


if __name__ == "__main__":
    main()
