"""B3 on a deep network: hypervolume against evaluations on the ResNet, channels, bits and sparsity searched.

B3's part 1 (``benchmarks/b3_search_efficiency.py``) on the ``resnet`` task: every prunable layer gets a code
width, a fine-grained sparsity and (channel-group leaders) a channel keep ratio, on the default search space's
grids. Searchers: ``rl`` (the AMC-style DDPG agent, its first quarter of the episodes random warm-up, as in B3's
AMC part), ``rl-no-learning`` (the same searcher kept in warm-up: walled random actions with per-episode
targets, no agent; its first quarter of the episodes is identical to ``rl``'s), ``tpe`` and ``nsga2``. Each gets
the same number of evaluations per seed through the runner's ask / evaluate / tell loop with one shared
Evaluator (its cache only saves time; a repeated proposal still counts), under a size budget (default 1/8 of
the fp32 bytes of the prunable layers) and a latency target (default 50% of the baseline latency). As in B3,
the searchers' own proposals are evaluated: no uniform seeds, budget repair or latency fill.

To keep it affordable, every searcher alike is evaluated with ``EvaluatorSettings(latency="predicted")`` (the
device's latency lookup table, no real timing of candidates: the table's periodic measured check is off) and no
per-candidate fine-tune (0 steps; BatchNorm recalibrated). The baseline latency that the target is a fraction
of is the one every candidate is judged by, the table's prediction for the uncompressed model; the real
measurement of that model in this run is reported beside it.

With few evaluations, ``tpe`` and ``nsga2`` start alike: TPE's first 10 trials and NSGA-II's first generation (20)
are both Optuna's seeded random sampling, so their first 10 proposals coincide (and cost one evaluation each).

Defaults: 24 evaluations x 3 seeds x 4 searchers (about 240 distinct candidates at 2-4 s each on 2 CPU cores,
about 15 minutes); 40 evaluations take about 25 minutes. New layer shapes are profiled into the device's latency
table as they appear (and kept there), so run it on a quiet machine.

Score: the exact hypervolume of the feasible (accuracy up, size down, latency down) candidates against the
reference point (``--accuracy-ref``, default chance on MNIST's 10 classes; the size budget; the latency target),
normalised to 1 = every model at 100% accuracy, 0 bytes, 0 ms.

    python benchmarks/b3_deep.py [--evaluations 24] [--seeds 3] [--budget-fraction 0.125]
        [--latency-fraction 0.5] [--searchers rl,rl-no-learning,tpe,nsga2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.b3_search_efficiency import checkpoints_of, curves, plot, run_searchers, searcher_table  # noqa: E402
from benchmarks.common import OUT_DIR, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import DEFAULT_DEVICE, load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search.searchers.rl.agent import RLOptions  # noqa: E402

NAME = "b3_deep"
SEARCHER_NAMES = ("rl", "rl-no-learning", "tpe", "nsga2")
SETTINGS = EvaluatorSettings(finetune=FinetuneSettings(), latency="predicted", latency_check_every=10**9)
"""Every searcher's evaluation: predicted latency (one real check, of the first architecture), no fine-tune."""


def goal_line(frame: pd.DataFrame, evaluations: int) -> str:
    """Whether ``rl`` beats ``rl-no-learning`` at the last evaluation by more than the seed spread."""
    last = frame[frame.evaluation == evaluations].groupby("searcher").hypervolume
    if not {"rl", "rl-no-learning"} <= set(last.groups):
        return "Goal (rl beats rl-no-learning by more than the seed spread): not measured (both searchers needed)."
    mean, spread = last.mean(), last.max() - last.min()
    lead, noise = mean["rl"] - mean["rl-no-learning"], max(spread["rl"], spread["rl-no-learning"])
    verdict = "met" if lead > noise else "NOT met"
    return (f"Goal (the learned agent beats its ablation by more than the seed spread, HV @ {evaluations}): "
            f"{verdict}. rl {mean['rl']:.4f} vs rl-no-learning {mean['rl-no-learning']:.4f}: lead {lead:+.4f}, "
            f"largest min-max range over seeds of the two {noise:.4f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=24, help="evaluations per searcher and seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-fraction", type=float, default=0.125, help="size budget, share of the fp32 bytes")
    parser.add_argument("--latency-fraction", type=float, default=0.5, help="latency target, share of the baseline")
    parser.add_argument("--accuracy-ref", type=float, default=0.1, help="hypervolume reference accuracy")
    parser.add_argument("--searchers", default=",".join(SEARCHER_NAMES), help="comma-separated searchers")
    args = parser.parse_args()

    start = time.perf_counter()
    task = load_task("resnet", progress=True)
    evaluator = Evaluator(task, load_device(DEFAULT_DEVICE), SETTINGS)
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), SpaceSettings(),
                        tuple(evaluator.layers))
    original = 4 * sum(spec.params for spec in evaluator.layers)
    baseline_ms = evaluator.latency_ms(task.model)  # the table's prediction, as every candidate's
    measured_ms = evaluator.latency_checks[-1].measured_ms  # the first architecture is also measured
    budget = Budget(size_bytes=int(original * args.budget_fraction), latency_ms=args.latency_fraction * baseline_ms)
    ref = np.array([-args.accuracy_ref, budget.size_bytes, budget.latency_ms])
    scale = float((1 - args.accuracy_ref) * ref[1] * ref[2])
    names = args.searchers.split(",")
    warmup = max(1, args.evaluations // 4)
    try:
        trials = run_searchers(names, space, budget, evaluator, args.evaluations, args.seeds,
                               RLOptions(warmup_episodes=warmup))
    finally:
        evaluator.close()
    frame = curves(trials, ref, scale)
    means = frame.groupby(["searcher", "evaluation"]).hypervolume.mean().unstack(0)
    plot(means, frame, names, OUT_DIR / f"{NAME}.png", title="B3 deep: ResNet, size budget + latency target")
    lines = [
        f"ResNet (MNIST-5k), {len(space.layers)} prunable layers ({len(space.leaders)} channel groups): per layer "
        f"bits {', '.join(map(str, space.settings.bits))}, sparsity 0-{space.settings.sparsity_max:g}, keep "
        f"{space.keep_grid()[0]:g}-1. Size budget {budget.size_bytes:,} B ({args.budget_fraction:g} of "
        f"{original:,} fp32 bytes); latency target {budget.latency_ms:.2f} ms ({args.latency_fraction:g} of the "
        f"baseline's {baseline_ms:.2f} ms predicted by the {DEFAULT_DEVICE} latency table; measured in this run: "
        f"{measured_ms:.2f} ms). Every candidate: predicted latency, no fine-tune, BatchNorm recalibrated. "
        f"{args.evaluations} evaluations per searcher and seed, seeds 0-{args.seeds - 1}; rl warm-up {warmup} "
        f"episodes. Mean and (min-max) over seeds of the normalised hypervolume (reference: accuracy "
        f"{args.accuracy_ref:g}, the size budget, the latency target) and of the best feasible val accuracy:",
        "",
        *searcher_table(frame, trials, names, checkpoints_of(args.evaluations), best_accuracy=True),
        "",
        goal_line(frame, args.evaluations),
        f"\nPlot: `benchmarks/out/{NAME}.png`. Total {time.perf_counter() - start:.0f} s.",
    ]
    write_outputs(NAME, trials.merge(frame, on=["searcher", "seed", "evaluation"]), "\n".join(lines), args)


if __name__ == "__main__":
    main()
