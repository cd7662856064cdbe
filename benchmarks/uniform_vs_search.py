"""Uniform against searched: the best uniform policy and the searched front at fractions of the fp32 bytes.

Default: LeNet-5 at 1/4, 1/8 and 1/16 (the MCT comparison); ``--task charlstm --budgets 20`` scores the
character LSTM in bits per character (lower is better; every task is reported in its own metric).

The budgets are fractions of the fp32 bytes of the prunable layers (4 x their parameters, as ``search/export.py``
counts the original). For each budget and seed:

* **uniform**: every uniform policy on the default search space's grids (one code width, quantizer and
  fine-grained sparsity for all layers, no channel pruning) whose real packed file (no fine-tune) fits the
  budget is evaluated as the search evaluates a candidate (``Evaluator.evaluate`` with the default
  ``EvaluatorSettings``: the 8-step screening fine-tune), and again with no fine-tune at all; the best of each
  by validation accuracy is reported with its test accuracy, and the screened best once more after the
  export stage's final fine-tune (``ExportSettings().final_finetune``, ``--epochs`` epochs);
* **searched**: ``search.run_search`` with the project's defaults (``tpe``, ``--trials``, default space and
  evaluator, size budget only): before the final fine-tune, the within-budget trial with the best validation
  accuracy (trials.csv: the 30-step score of a promoted candidate, else the screening one), recompressed with
  the evaluator's default refinement (8 steps) for its test accuracy; after it, the exported model with the
  best validation accuracy (pareto.csv).

Goal: before any final fine-tune, the searched best is at least as accurate on test as the uniform best at
every budget.

Comparison point (external, not run here): Sony's Model Compression Toolkit 2.6.1, mixed-precision
post-training quantization of this LeNet-5 at 1/8 of the fp32 bytes, chose 8/4/4/4 bits per layer and scored
0.964 test accuracy with no retraining.

    python benchmarks/uniform_vs_search.py [--task lenet5] [--budgets 4,8,16] [--trials 60] [--seeds 0] [--epochs 2]
        [--prune-rounds 1] [--schedule constant]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.b1_deep_compression import policy_text  # noqa: E402
from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from core.metric import ACCURACY, MetricSpec  # noqa: E402
from core.policy import FP32_BITS, LayerChoice, Policy  # noqa: E402
from core.space import SpaceSettings  # noqa: E402
from envs.device import DEFAULT_DEVICE, load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search import run_search  # noqa: E402
from search.export import ExportSettings  # noqa: E402

SEARCHER = "tpe"
"""The project's default searcher."""


def uniform_policies(layers: list[str], settings: SpaceSettings) -> list[Policy]:
    """Every uniform (bits, quantizer, sparsity) policy on the space's grids, keep 1 (fp32 has no quantizer)."""
    step = settings.sparsity_step
    sparsities = [round(i * step, 6) for i in range(math.floor(settings.sparsity_max / step + 1e-9) + 1)]
    combos = [(bits, quantizer) for bits in settings.bits if bits != FP32_BITS for quantizer in settings.quantizers]
    combos += [(FP32_BITS, settings.quantizers[0])] if FP32_BITS in settings.bits else []
    return [Policy.from_choices({name: LayerChoice(sparsity=s, bits=bits, quantizer=quantizer) for name in layers})
            for bits, quantizer in combos for s in sparsities]


def best_by_val(evaluator: Evaluator, policies: list[Policy], budget: int) -> tuple[Policy, float] | None:
    """The policy with the best validation score among those whose evaluated file fits ``budget``."""
    scored = [(policy, evaluator.evaluate(policy)) for policy in policies]
    fitting = [(policy, result.val_accuracy) for policy, result in scored if result.ok and result.size_bytes <= budget]
    return max(fitting, key=lambda pair: pair[1]) if fitting else None


def _row(seed: int, divisor: int, budget: int, method: str, policy: Policy | None, val: float, test: float,
         size: int, metric: MetricSpec) -> dict[str, object]:
    """One table row; ``val`` and ``test`` are scores, shown as the metric's values."""
    return {"seed": seed, "budget": f"1/{divisor}", "budget_bytes": budget, "method": method,
            metric.column("val"): metric.value(val), metric.column("test"): metric.value(test), "size_bytes": size,
            "budget_use": f"{100 * size / budget:.1f}%" if size else "-",
            "policy": policy_text(policy) if policy is not None else "nothing within budget"}


def export_settings(args: argparse.Namespace) -> ExportSettings:
    """The final fine-tune of both sides: ``--epochs``, ``--prune-rounds`` and ``--schedule`` on the defaults."""
    finetune = replace(ExportSettings().finetune, prune_rounds=args.prune_rounds, lr_schedule=args.schedule)
    return ExportSettings(finetune_epochs=args.epochs, finetune=finetune)


def uniform_rows(evaluators: dict[str, Evaluator], candidates: list[Policy], seed: int, divisor: int, budget: int,
                 export: ExportSettings) -> list[dict[str, object]]:
    """Best uniform policy with no fine-tune and with the screening fine-tune, and the latter after the final one."""
    rows = []
    screened = evaluators["screening"]
    metric = screened.task.metric_spec
    for label, evaluator in evaluators.items():
        best = best_by_val(evaluator, candidates, budget)
        method = f"uniform, best by val ({label})"
        if best is None:
            rows.append(_row(seed, divisor, budget, method, None, math.nan, math.nan, 0, metric))
            continue
        policy, val = best
        compressed = evaluator.compress(policy)
        rows.append(_row(seed, divisor, budget, method, policy, val, evaluator.test_accuracy(compressed),
                         compressed.size_bytes, metric))
        if evaluator is screened:
            final = export.final_finetune(screened, seed)
            compressed = screened.compress(policy, screened.refinement(final))
            result = screened.measure(compressed)
            rows.append(_row(seed, divisor, budget, "uniform (screened best) after final fine-tune", policy,
                             result.val_accuracy, screened.test_accuracy(compressed), result.size_bytes, metric))
    return rows


def searched_rows(screened: Evaluator, seed: int, divisor: int, budget: int, args: argparse.Namespace,
                  runs: Path) -> list[dict[str, object]]:
    """The default search's best candidate before the final fine-tune and its best exported model after it."""
    start = time.perf_counter()
    metric = screened.task.metric_spec
    # ExportSettings, not a mapping: a partial ``export`` mapping resets the fine-tune to FinetuneSettings' lr 1e-4
    outcome = run_search(task=args.task, out=runs / f"budget{divisor}-seed{seed}", searcher=SEARCHER,
                         trials=args.trials, seed=seed, budget_mb=f"{budget}B",
                         export=export_settings(args))
    print(f"  search 1/{divisor} seed {seed}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
    feasible = [trial for trial in outcome.trials if trial.feasible]
    method = f"{SEARCHER}, {args.trials} trials: best by val before final fine-tune"
    if not feasible:
        rows = [_row(seed, divisor, budget, method, None, math.nan, math.nan, 0, metric)]
    else:
        best = max(feasible, key=lambda trial: trial.result.val_accuracy)
        compressed = screened.compress(best.policy)  # the evaluator's default refinement
        rows = [_row(seed, divisor, budget, method, best.policy, best.result.val_accuracy,
                     screened.test_accuracy(compressed), compressed.size_bytes, metric)]
    method = f"{SEARCHER}, {args.trials} trials: best exported model (after final fine-tune)"
    if not outcome.models:
        return [*rows, _row(seed, divisor, budget, method, None, math.nan, math.nan, 0, metric)]
    model = max(outcome.models, key=lambda exported: exported.val_accuracy)
    return [*rows, _row(seed, divisor, budget, method, model.policy, model.val_accuracy, model.test_accuracy,
                        model.size_bytes, metric)]


def goal_lines(frame: pd.DataFrame, metric: MetricSpec = ACCURACY) -> list[str]:
    """Per budget and seed: searched best before the final fine-tune against the screened uniform best (test)."""
    lines, met = [], True
    column = metric.column("test")
    for (seed, budget), group in frame.groupby(["seed", "budget"], sort=False):
        uniform = group[group.method == "uniform, best by val (screening)"][column].iloc[0]
        searched = group[group.method.str.endswith("before final fine-tune")][column].iloc[0]
        ok = searched == uniform or metric.better(searched, uniform) or math.isnan(uniform)
        met &= ok
        lines.append(f"- budget {budget}, seed {seed}: searched {searched:.4f} vs uniform {uniform:.4f} "
                     f"({'met' if ok else 'missed'})")
    head = "met" if met else "NOT met"
    return [f"Goal (before the final fine-tune, searched best at least as good as the uniform best at every budget, "
            f"test {metric.name}): "
            f"{head}.", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lenet5", help="built-in task")
    parser.add_argument("--budgets", default="4,8,16", help="size budgets as divisors of the fp32 bytes")
    parser.add_argument("--trials", type=int, default=60, help="trials of each search")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (search and final fine-tune)")
    parser.add_argument("--epochs", type=float, default=2.0, help="final fine-tune epochs, uniform and searched")
    parser.add_argument("--prune-rounds", type=int, default=1, help="final fine-tune: gradual pruning rounds")
    parser.add_argument("--schedule", default="constant", help="final fine-tune learning-rate schedule")
    args = parser.parse_args()

    start = time.perf_counter()
    name = "uniform_vs_search" if args.task == "lenet5" else f"uniform_vs_search_{args.task}"
    runs = OUT_DIR / f"{name}_runs"
    shutil.rmtree(runs, ignore_errors=True)
    task, device = load_task(args.task, progress=True), load_device(DEFAULT_DEVICE)
    evaluators = {"no fine-tune": Evaluator(task, device, EvaluatorSettings(finetune=FinetuneSettings())),
                  "screening": Evaluator(task, device)}
    screened = evaluators["screening"]
    original = 4 * sum(spec.params for spec in screened.layers)
    divisors = [int(d) for d in args.budgets.split(",")]
    raw = screened.refinement(FinetuneSettings())
    policies = uniform_policies(screened.layer_names, SpaceSettings())
    sizes = {policy: screened.compress(policy, raw, verify=False).size_bytes for policy in policies}
    rows = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            for divisor in divisors:
                budget = original // divisor
                candidates = [policy for policy in policies if sizes[policy] <= budget]
                print(f"budget 1/{divisor} ({budget} B), seed {seed}: {len(candidates)}/{len(policies)} uniform "
                      "policies fit", file=sys.stderr)
                rows += uniform_rows(evaluators, candidates, seed, divisor, budget, export_settings(args))
                rows += searched_rows(screened, seed, divisor, budget, args, runs)
                print(pd.DataFrame(rows[-5:]).to_string(), file=sys.stderr)
    finally:
        for evaluator in evaluators.values():
            evaluator.close()
    frame = pd.DataFrame(rows)
    summary = "\n".join([
        f"Task {args.task} ({task.metric_spec.text}), fp32 bytes of the prunable layers {original:,}; "
        f"{len(policies)} uniform policies on the "
        f"default space's grids (bits {', '.join(map(str, SpaceSettings().bits))}; quantizers "
        f"{', '.join(SpaceSettings().quantizers)}; sparsity 0-{SpaceSettings().sparsity_max:g}). Screening = the "
        "search's per-candidate evaluation (8 fine-tune steps); final fine-tune = the export stage's "
        f"({args.epochs:g} epochs, {args.prune_rounds} pruning round(s), {args.schedule} rate). "
        f"Test {task.metric_spec.name} of the policy chosen on val.", "",
        markdown_table(frame), "", *goal_lines(frame, task.metric_spec), "",
        *(["Reference (not run): MCT 2.6.1 mixed-precision PTQ of LeNet-5 at 1/8 of the fp32 bytes: 8/4/4/4 bits, "
           "0.964, no retraining."] if args.task == "lenet5" else []),
        f"Total {time.perf_counter() - start:.0f} s."])
    write_outputs(name, frame, summary, args)


if __name__ == "__main__":
    main()
