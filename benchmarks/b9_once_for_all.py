"""B9: once-for-all search against per-candidate pruning, at latency targets, with the wall time each costs.

For a task on a device profile (default the ResNet on ``cpu-b32``), the fp32 latency of the original model is
measured first and the targets are fractions of it (default 50% and 30%). Every row searches channel widths only
(fp32 weights, no sparsity, keep ratios on a 1/16 grid, proposals latency-filled to 95% of the target as in B2) with
the same searcher, seed and export, and reports the exported model with the best validation accuracy:

* ``per-candidate pruning``: today's search: each candidate cut from the trained model (L1 channel importance),
  fine-tuned for ``--proxy-steps`` steps before its validation accuracy is read, then the final fine-tune
  (``--epochs``) of the exported models (B2's setup);
* ``once-for-all``: ``--ofa``: one supernet trained once (``--ofa-epochs`` of progressive shrinking with
  distillation), then every candidate is a sub-network scored with no fine-tune; exported with no fine-tune;
* ``once-for-all + final fine-tune``: the same search, the exported models fine-tuned like the first row's;
* ``control``: the widths the once-for-all row chose, cut from the original model (L1 importance, BatchNorm
  recalibrated, no fine-tune): what the supernet's training adds.

The supernet is trained (or read from the cache, which the table says) before the first target, and its training
time is counted once for all targets. The amortisation table adds up each approach's cost for ``N`` targets served:
per-candidate pruning pays its whole search per target, once-for-all pays the supernet once plus a cheap search
per target.

    python benchmarks/b9_once_for_all.py [--task resnet] [--device cpu-b32] [--targets 0.5,0.3] [--trials 30]
        [--ofa-trials 60] [--searcher tpe] [--epochs 2] [--proxy-steps 30] [--ofa-epochs 3] [--max-models 2]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from envs.device import load_device, measure_latency  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from search import run_search  # noqa: E402
from search.config import build_config, once_for_all  # noqa: E402
from search.prepared import prepare  # noqa: E402


def _settings(args: argparse.Namespace, target_ms: float, ofa: bool, epochs: float) -> dict[str, Any]:
    """The run's settings (SearchConfig keys) for one row."""
    values: dict[str, Any] = {
        "task": args.task, "device": args.device, "searcher": args.searcher, "seed": args.seed,
        "trials": args.ofa_trials if ofa else args.trials, "target_latency": f"{target_ms}ms",
        "space": {"bits": [32], "sparsity_max": 0.0, "keep_step": 0.0625, "keep_min": 0.0625, "latency_fill": 0.95},
        "evaluator": {"latency": "predicted", "finetune_steps": 0 if ofa else args.proxy_steps, "finetune_lr": 1e-3},
        "export": {"finetune_epochs": epochs, "max_models": args.max_models},
    }
    if ofa:
        values["export"]["learned_epochs"] = args.ofa_epochs
        values = once_for_all(values)
    return values


def _best(outcome: Any) -> Any:
    """The exported model with the best validation accuracy, or None."""
    return max(outcome.models, key=lambda m: m.val_accuracy) if outcome.models else None


def _row(label: str, target_ms: float, method: str, model: Any, seconds: float, evaluations: int) -> dict:
    row = {"target": label, "target_ms": target_ms, "method": method, "evaluations": evaluations,
           "seconds": round(seconds, 1)}
    if model is not None:
        row.update(test_accuracy=model.test_accuracy, val_accuracy=model.val_accuracy, latency_ms=model.latency_ms,
                   mmacs=model.macs / 1e6, params=model.params, size_bytes=model.size_bytes)
    print(row, file=sys.stderr)
    return row


def _control(prepared: Any, policy: Any) -> float:
    """Test accuracy of ``policy``'s widths cut from the original model (L1, BatchNorm recalibrated, no fine-tune)."""
    evaluator = prepared.evaluator
    evaluator.learned_default = None
    plain = replace(policy, learned=None, channel_importance="l1")
    compressed = evaluator.compress(plain, evaluator.refinement(FinetuneSettings(steps=0)), verify=False)
    return evaluator.test_accuracy(compressed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="resnet")
    parser.add_argument("--device", default="cpu-b32")
    parser.add_argument("--targets", default="0.5,0.3", help="latency targets as fractions of the fp32 latency")
    parser.add_argument("--trials", type=int, default=30, help="candidates of the per-candidate pruning search")
    parser.add_argument("--ofa-trials", type=int, default=60, help="candidates of each once-for-all search")
    parser.add_argument("--searcher", default="tpe")
    parser.add_argument("--epochs", type=float, default=2.0, help="final fine-tune epochs of the fine-tuned rows")
    parser.add_argument("--proxy-steps", type=int, default=30, help="fine-tune steps per per-candidate-pruning trial")
    parser.add_argument("--ofa-epochs", type=float, default=3.0, help="passes of the supernet's training")
    parser.add_argument("--max-models", type=int, default=2, help="models each run exports (and fine-tunes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = load_task(args.task, progress=True)
    device = load_device(args.device)
    fp32 = statistics.median(measure_latency(task.model, task.input_shape, device) for _ in range(3))
    runs = OUT_DIR / "b9_runs"
    shutil.rmtree(runs, ignore_errors=True)
    fractions = [float(f) for f in args.targets.split(",")]

    start = time.perf_counter()  # the supernet, once: the same settings (and cache key) as every --ofa row's
    supernet_config = build_config(_settings(args, fractions[0] * fp32, ofa=True, epochs=0.0))
    prepared = prepare(supernet_config, progress=True)
    base = prepared.evaluator.learned.base("ofa")
    supernet_seconds = base.outcome.seconds
    print(f"supernet: {supernet_seconds:.1f} s ({'cache' if base.outcome.cached else 'trained now'}; "
          f"prepare {time.perf_counter() - start:.1f} s)", file=sys.stderr)

    rows, costs = [], []
    for fraction in fractions:
        target = fraction * fp32
        label = f"{fraction:.0%} ({target:.1f} ms)"
        arms = (("per-candidate pruning", False, args.epochs), ("once-for-all", True, 0.0),
                ("once-for-all + final fine-tune", True, args.epochs))
        for method, ofa, epochs in arms:
            begin = time.perf_counter()
            outcome = run_search(out=runs / f"{fraction:g}-{method.replace(' ', '_')}",
                                 **_settings(args, target, ofa, epochs))
            seconds = time.perf_counter() - begin
            best = _best(outcome)
            rows.append(_row(label, target, method, best, seconds, len(outcome.trials)))
            costs.append({"target": label, "method": method, "seconds": seconds})
            if method == "once-for-all" and best is not None:
                accuracy = _control(prepared, best.policy)
                rows.append({"target": label, "target_ms": target, "method": "control: its widths cut from the "
                             "original, no fine-tune", "test_accuracy": accuracy})
    frame = pd.DataFrame(rows)
    frame["latency_vs_fp32"] = frame["latency_ms"] / fp32
    cost = pd.DataFrame(costs)
    per_target = {m: cost[cost.method == m].seconds.mean() for m in cost.method.unique()}
    amortised = []
    for n in (1, len(fractions), 4, 8):
        a = n * per_target["per-candidate pruning"]
        for method in ("once-for-all", "once-for-all + final fine-tune"):
            b = supernet_seconds + n * per_target[method]
            amortised.append({"targets served": n, "measured": n <= len(fractions), "once-for-all row": method,
                              "per-candidate pruning s": round(a), "once-for-all s (supernet once)": round(b),
                              "ratio": round(a / b, 2)})
    origin = "read from the cache" if base.outcome.cached else "trained in this run"
    summary = (f"Task {args.task}, device {args.device}; fp32 latency {fp32:.2f} ms (median of 3). Supernet: "
               f"{supernet_seconds:.1f} s of training ({origin}, {args.ofa_epochs:g} passes), counted once.\n\n"
               f"{markdown_table(frame)}\n\n"
               f"Cost of serving N targets (seconds; per-target means of the rows above, N beyond "
               f"{len(fractions)} projected from them):\n\n{markdown_table(pd.DataFrame(amortised))}")
    write_outputs(f"b9_ofa_{args.task}_{args.device}_seed{args.seed}", frame, summary, args)


if __name__ == "__main__":
    main()
