"""B3: search efficiency -- hypervolume against evaluations on LeNet-5, and AMC's protocol on the ResNet.

Part 1 (LeNet-5, joint per-layer sparsity + bits + quantizer, channel pruning off, size budget): every searcher
(rl, random, tpe, nsga2) gets the same number of evaluations per seed through the runner's ask /
evaluate / tell loop, with one shared Evaluator (its result cache only saves time: a repeated
proposal still counts as an evaluation). The score is the exact hypervolume of the feasible
(accuracy up, size down, latency down) front against a fixed reference point, computed by the small
3-D slicing algorithm below (cross-checked against Optuna's WFG implementation).

Part 2 (AMC's own protocol): ResNet, channel pruning only (no sparsity, fp32 weights) under a MACs
budget of 50% of the original; the RL agent against uniform pruning (the largest uniform keep ratio
within the budget). Accuracy is measured after BatchNorm recalibration, without fine-tuning.

    python benchmarks/b3_search_efficiency.py [--evaluations 300] [--seeds 3] [--amc-episodes 100]
        [--searchers rl,random,tpe,nsga2] [--name b3_search_efficiency]

Part 1 on the ResNet (channels, bits and sparsity, size budget and latency target): ``benchmarks/b3_deep.py``.
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

from benchmarks.common import OUT_DIR, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.policy import LayerChoice, Policy  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import DeviceProfile, load_device  # noqa: E402
from envs.evaluator import Evaluator  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from search.searchers import SEARCHERS  # noqa: E402
from search.searchers.rl.agent import RLOptions  # noqa: E402
from search.searchers.rl.environment import CompressEnv, EnvSettings  # noqa: E402

SEARCHER_NAMES = ("rl", "random", "tpe", "nsga2")
"""Searchers of part 1 by default; ``rl-no-learning`` (the RL searcher kept in warm-up: walled random
actions with per-episode targets, no agent) is an ablation that ``--searchers`` can add."""
ACCURACY_REF = 0.9
"""Reference accuracy of the hypervolume: models below 90% on MNIST count for nothing."""
NAME = "b3_search_efficiency"
"""Default output name (``benchmarks/out/<name>.md`` / ``.csv``)."""
AMC_DEVICE = DeviceProfile(name="amc", threads=2, batch=1, warmup=0, repeats=1)
"""Part 2 does not use latency; the cheapest timing keeps its evaluations short."""


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points (n x 3) dominated region bounded by ``ref``.

    Slices along the third objective; each slab's area is the 2-D staircase of the points below it.
    """
    points = points[np.all(points < ref, axis=1)]
    if not len(points):
        return 0.0
    levels = np.unique(points[:, 2])
    total = 0.0
    for i, level in enumerate(levels):
        top = levels[i + 1] if i + 1 < len(levels) else ref[2]
        slab = points[points[:, 2] <= level][:, :2]
        slab = slab[np.lexsort((slab[:, 1], slab[:, 0]))]
        area, best_y = 0.0, ref[1]
        for j, (x, y) in enumerate(slab):
            best_y = min(best_y, y)
            next_x = slab[j + 1, 0] if j + 1 < len(slab) else ref[0]
            area += (next_x - x) * (ref[1] - best_y)
        total += area * (top - level)
    return float(total)


def run_searcher(name: str, space: SearchSpace, budget: Budget, seed: int, evaluator: Evaluator,
                 evaluations: int, options: object = None, label: str | None = None) -> list[dict]:
    """The runner's loop (ask, evaluate, tell) for ``evaluations`` candidates; one row per candidate, its
    ``searcher`` column ``label`` (default ``name``)."""
    searcher = SEARCHERS[name](space, budget, seed, None, evaluator=evaluator, options=options)
    rows, start = [], time.perf_counter()
    try:
        for i in range(evaluations):
            proposal = searcher.ask()
            result = evaluator.evaluate(proposal.policy)
            searcher.tell(proposal, result)
            feasible = result.ok and budget.admits(result.size_bytes, result.latency_ms)
            rows.append({"searcher": label or name, "seed": seed, "evaluation": i + 1,
                         "val_accuracy": result.val_accuracy, "size_bytes": result.size_bytes,
                         "latency_ms": result.latency_ms, "macs": result.macs, "feasible": feasible,
                         "policy": proposal.policy.to_json()})
    finally:
        searcher.close()
    seconds = time.perf_counter() - start
    print(f"  {label or name} seed {seed}: {evaluations} evaluations in {seconds:.0f}s", file=sys.stderr)
    return rows


def curve(rows: pd.DataFrame, ref: np.ndarray, scale: float, step: int) -> list[tuple[int, float]]:
    """Normalised hypervolume of the feasible candidates among the first k evaluations, every ``step``."""
    out = []
    for k in [*range(step, int(rows.evaluation.max()), step), int(rows.evaluation.max())]:
        seen = rows[(rows.evaluation <= k) & rows.feasible]
        points = np.c_[-seen.val_accuracy, seen.size_bytes, seen.latency_ms]
        out.append((k, hypervolume(points, ref) / scale))
    return out


def run_searchers(names: list[str], space: SearchSpace, budget: Budget, evaluator: Evaluator, evaluations: int,
                  seeds: int, rl: RLOptions | None = None) -> pd.DataFrame:
    """Every searcher for every seed (``rl-no-learning``: ``rl`` kept in warm-up for all ``evaluations``)."""
    rows = []
    for seed in range(seeds):
        for name in names:
            base, options = (name, rl if name == "rl" else None)
            if name == "rl-no-learning":
                base, options = "rl", replace(rl or RLOptions(), warmup_episodes=evaluations)
            rows += run_searcher(base, space, budget, seed, evaluator, evaluations, options, label=name)
    return pd.DataFrame(rows)


def curves(trials: pd.DataFrame, ref: np.ndarray, scale: float) -> pd.DataFrame:
    """Normalised hypervolume after every evaluation, per searcher and seed."""
    return pd.DataFrame([{"searcher": n, "seed": s, "evaluation": k, "hypervolume": hv}
                         for (n, s), group in trials.groupby(["searcher", "seed"])
                         for k, hv in curve(group, ref, scale, step=1)])


def checkpoints_of(evaluations: int) -> list[int]:
    """Evaluation counts the tables report."""
    return sorted({evaluations // 6, evaluations // 3, evaluations // 2, evaluations} - {0})


def searcher_table(frame: pd.DataFrame, trials: pd.DataFrame, names: list[str], checkpoints: list[int],
                   best_accuracy: bool = False) -> list[str]:
    """Markdown lines: per searcher, mean and (min-max) over seeds of the hypervolume at ``checkpoints``,
    optionally of the best feasible val accuracy, and the share of feasible candidates."""
    table = frame[frame.evaluation.isin(checkpoints)].groupby(["searcher", "evaluation"]).hypervolume
    mean, low, high = table.mean().unstack(), table.min().unstack(), table.max().unstack()
    feasible = trials.groupby("searcher").feasible.mean()
    best = trials[trials.feasible].groupby(["searcher", "seed"]).val_accuracy.max().groupby("searcher")
    extra = " best feasible val accuracy |" if best_accuracy else ""
    lines = ["| searcher | " + " | ".join(f"HV @ {k}" for k in checkpoints) + f" |{extra} feasible candidates |",
             "|---|" + "---:|" * (len(checkpoints) + 1 + best_accuracy)]
    for name in names:
        cells = [f"{mean.loc[name, k]:.4f} ({low.loc[name, k]:.4f}-{high.loc[name, k]:.4f})" for k in checkpoints]
        if best_accuracy:
            found = name in best.groups
            cells.append(f"{best.mean()[name]:.4f} ({best.min()[name]:.4f}-{best.max()[name]:.4f})"
                         if found else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * feasible[name]:.0f}% |")
    return lines


def lenet_part(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Hypervolume against evaluations for every searcher and seed."""
    evaluator = Evaluator(load_task("lenet5", progress=True), load_device("cpu-b32"))
    settings = SpaceSettings(channel_pruning=False, quantizers=("linear", "kmeans"))  # sparsity, bits, quantizer
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings, tuple(evaluator.layers))
    budget = Budget(size_bytes=args.budget_kb * 1000)
    latency = evaluator.evaluate(Policy()).latency_ms  # one architecture: every candidate shares this latency
    ref = np.array([-ACCURACY_REF, budget.size_bytes, 2 * latency])
    scale = float((1 - ACCURACY_REF) * ref[1] * ref[2])
    names = args.searchers.split(",")
    trials = run_searchers(names, space, budget, evaluator, args.evaluations, args.seeds)
    frame = curves(trials, ref, scale)
    checkpoints = checkpoints_of(args.evaluations)
    lines = searcher_table(frame, trials, names, checkpoints)
    means = frame.groupby(["searcher", "evaluation"]).hypervolume.mean().unstack(0)
    if "random" in names:
        target = means["random"].iloc[-1]
        best = means.iloc[-1].idxmax()
        reached = means.index[means[best] >= target]
        lines.append("")
        lines.append(f"Best final mean hypervolume: {best}; it reaches random search's final mean hypervolume "
                     f"({target:.4f}) after {int(reached[0]) if len(reached) else 'more than ' + str(args.evaluations)}"
                     " evaluations.")
        for name in names:
            hit = means.index[means[name] >= target]
            lines.append(f"- {name}: {int(hit[0]) if len(hit) else '-'} evaluations to reach it")
    lines.append(f"\nMean and (min-max) over {args.seeds} seeds of the normalised hypervolume (1 = every model at "
                 f"100% accuracy, 0 bytes, 0 ms). Reference point: accuracy {ACCURACY_REF}, size = budget "
                 f"{budget.size_bytes} B, latency = 2x the measured {latency:.2f} ms (channel pruning is off, so all "
                 "candidates share one latency and the third axis is a constant factor).")
    plot(means, frame, names, OUT_DIR / ("b3_hypervolume.png" if args.name == NAME else f"{args.name}.png"))
    return frame.assign(part="lenet5"), "\n".join(lines)


def plot(means: pd.DataFrame, frame: pd.DataFrame, names: list[str], path: Path,
         title: str = "B3: LeNet-5, size budget") -> None:
    """Mean hypervolume against evaluations, min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    spread = frame.groupby(["searcher", "evaluation"]).hypervolume
    low, high = spread.min().unstack(0), spread.max().unstack(0)
    for name in names:
        ax.plot(means.index, means[name], label=name)
        ax.fill_between(means.index, low[name], high[name], alpha=0.2)
    ax.set(xlabel="evaluations", ylabel="normalised hypervolume (feasible front)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def amc_part(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """RL against uniform channel pruning on the ResNet at 50% of the MACs (AMC's protocol, no fine-tune)."""
    task = load_task("resnet", progress=True)
    evaluator = Evaluator(task, AMC_DEVICE)
    settings = SpaceSettings(sparsity_max=0.0, bits=(32,), keep_min=0.2, keep_step=0.05)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings, tuple(evaluator.layers))
    original = sum(spec.macs for spec in evaluator.layers)
    env = CompressEnv(settings=EnvSettings(mode="prune", macs_fraction=0.5), evaluator=evaluator, space=space,
                      budget=Budget())
    keep = next(k for k in env.grid.keeps  # descending: the least pruning within the budget (exact MACs)
                if env.cost_model.costs([LayerChoice(keep=k if lead else 1.0) for lead in env.leaders]).macs
                <= 0.5 * original)
    uniform = Policy.from_choices({name: LayerChoice(keep=keep) for name in evaluator.leaders})
    warmup = max(1, args.amc_episodes // 4)
    options = RLOptions(mode="prune", macs_fraction=0.5, budget_sampling="fixed", warmup_episodes=warmup)
    trials = pd.DataFrame(run_searcher("rl", space, Budget(), 0, evaluator, args.amc_episodes, options))
    within = trials[trials.macs <= 0.5 * original]
    best = Policy.from_json(within.loc[within.val_accuracy.idxmax(), "policy"])
    lines = ["| method | MACs (% of original) | val accuracy (BN recalibrated) | test accuracy |",
             "|---|---:|---:|---:|"]
    for label, policy in [("original (no pruning)", Policy()), (f"uniform keep {keep:g}", uniform),
                          (f"RL (DDPG), best of {args.amc_episodes} episodes by val accuracy", best)]:
        result = evaluator.evaluate(policy)
        test = evaluate_accuracy(evaluator.compress(policy).model, task.test)
        lines.append(f"| {label} | {100 * result.macs / original:.1f}% | {result.val_accuracy:.4f} | {test:.4f} |")
    early, late = trials.val_accuracy[:warmup].mean(), trials.val_accuracy[-warmup:].mean()
    lines.append(f"\nResNet, channel pruning only (keep grid 0.2-1.0, step 0.05; fp32 weights, no fine-grained "
                 f"sparsity), MACs <= 50% of {original:,}. {args.amc_episodes} episodes, {warmup} of random warm-up; "
                 f"mean val accuracy of the warm-up episodes {early:.4f}, of the last {warmup} episodes {late:.4f}; "
                 f"{len(within)}/{len(trials)} episodes within the MACs budget. RL keep ratios: "
                 + ", ".join(f"{name} {choice.keep:g}" for name, choice in best if choice.keep < 1) + ".")
    return trials.assign(part="amc"), "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=300, help="evaluations per searcher and seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-kb", type=int, default=100, help="size budget of part 1, in KB")
    parser.add_argument("--amc-episodes", type=int, default=100, help="RL episodes of part 2 (0 skips it)")
    parser.add_argument("--searchers", default=",".join(SEARCHER_NAMES), help="part 1 searchers, comma-separated "
                        "(also rl-no-learning)")
    parser.add_argument("--name", default=NAME, help="output name under benchmarks/out/")
    args = parser.parse_args()
    frame, summary = lenet_part(args)
    if args.amc_episodes:
        amc_frame, amc_summary = amc_part(args)
        frame, summary = pd.concat([frame, amc_frame]), f"{summary}\n\n{amc_summary}"
    write_outputs(args.name, frame, summary, args)


if __name__ == "__main__":
    main()
