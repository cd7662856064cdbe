"""B2: latency-constrained structured pruning -- searched per-layer widths against uniform and global pruning.

For a task on a device profile, the fp32 latency of the original model is measured first; the targets are
fractions of it (default 50% and 30%). For each target, side by side and with the same final fine-tune
(``--epochs`` of the export stage's default final fine-tune, ``search.export.ExportSettings``; BatchNorm
recalibrated):

* ``uniform``: the same kept fraction of channels in every group, the largest that meets the target
  (bisection on measured latency);
* ``torch-pruning global``: Torch-Pruning's ``MagnitudePruner`` with ``global_pruning=True`` (one L2-magnitude
  ranking of all channel groups) at the largest pruning ratio that meets the target; the widths it
  leaves are then applied through this project's pipeline, so every row is packed and measured alike;
* each searcher: channel keep ratios only (fp32 weights, no sparsity), the latency target as its budget,
  the device's latency lookup table as the latency model during the search, each proposal's widths
  scaled together to just under the target by that model (``--latency-fill``, ``search/latency_fill.py``;
  0 turns it off), optionally a short fine-tune of each candidate before its validation accuracy is read
  (``--proxy-steps``), and the exported model with the best validation accuracy as its result. Every
  exported model is measured for real; one over its target is dropped by the export stage.

Columns: test accuracy, measured latency, its ratio to fp32, MMACs, parameters, packed size, the predictor's latency
for the searched model, evaluations and seconds. A last table gives the latency predictor's median
absolute error over every candidate checked against a real run.

    python benchmarks/b2_latency.py [--task resnet] [--device cpu-b32] [--targets 0.5,0.3] [--trials 60]
        [--searchers tpe,nsga2,random,rl] [--epochs 2] [--latency-fill 0.95] [--proxy-steps 0]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, markdown_table, write_outputs  # noqa: E402
from core.policy import MIN_KEEP, LayerChoice, Policy  # noqa: E402
from core.result import Result  # noqa: E402
from envs.device import load_device, measure_latency  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from methods.pipeline import CompressedModel, architecture  # noqa: E402
from search import run_search  # noqa: E402
from search.export import ExportSettings  # noqa: E402

SAFETY = 0.97
"""Fixed policies aim at this fraction of the target (again for each retry), so a noisy re-measurement meets it."""
RETRIES = 4
"""Attempts of a fixed policy to meet its target by measurement after the fine-tune."""
BISECTION_STEPS = 9
"""Measured candidates per fixed policy (the search for its ratio)."""


def _bisect(latency_of: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The largest ``x`` in [low, high] with ``latency_of(x) <= target`` (latency grows with ``x``)."""
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if latency_of(mid) <= target:
            low = mid
        else:
            high = mid
    return low


def _keep_policy(keeps: dict[str, float], runtime: str | None = None) -> Policy:
    return Policy.from_choices(
        {name: LayerChoice(keep=max(MIN_KEEP, min(1.0, k))) for name, k in keeps.items()}, runtime=runtime
    )


def probe_ms(evaluator: Evaluator, policy: Policy) -> float:
    """Latency of ``policy``'s architecture on its runtime, timed for real: the shapes alone (no fine-tune, no
    packing); an evaluator that measures every architecture reuses an earlier run of the same shapes."""
    task = evaluator.task
    model = architecture(task.model, policy, task.input_shape, evaluator.device.channel_multiple)
    return evaluator.latency_ms(model, reuse=evaluator.settings.latency == "measured", runtime=policy.runtime)


def uniform_policy(evaluator: Evaluator, target: float, runtime: str | None = None) -> Policy:
    """The same keep ratio for every channel group, the largest within ``target`` on ``runtime``."""
    def latency(keep: float) -> float:
        return probe_ms(evaluator, _keep_policy(dict.fromkeys(evaluator.leaders, keep), runtime))

    keep = _bisect(latency, target, MIN_KEEP, 1.0)
    return _keep_policy(dict.fromkeys(evaluator.leaders, keep), runtime)


def global_magnitude_keeps(evaluator: Evaluator, ratio: float) -> dict[str, float]:
    """Kept fraction per channel group after Torch-Pruning's global magnitude pruning at ``ratio``."""
    model = copy.deepcopy(evaluator.task.model).eval()
    example = torch.zeros(1, *evaluator.task.input_shape)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=ratio, ignored_layers=classifier,
    )
    pruner.step()
    return {
        group.leader: model.get_submodule(group.leader).weight.shape[0] / group.channels
        for group in evaluator.groups
    }


def global_policy(evaluator: Evaluator, target: float, runtime: str | None = None) -> Policy:
    """Torch-Pruning global magnitude widths at the largest ratio within ``target`` on ``runtime``."""
    def latency(kept: float) -> float:
        return probe_ms(evaluator, _keep_policy(global_magnitude_keeps(evaluator, 1.0 - kept), runtime))

    kept = _bisect(latency, target, 0.05, 1.0)
    return _keep_policy(global_magnitude_keeps(evaluator, 1.0 - kept), runtime)


def final_finetune(evaluator: Evaluator, epochs: float) -> FinetuneSettings:
    """The export stage's default final fine-tune for ``epochs`` (what every searched model gets)."""
    return ExportSettings(finetune_epochs=epochs).final_finetune(evaluator, seed=0)


def fixed_model(
    evaluator: Evaluator, choose: Callable[[Evaluator, float], Policy], target: float, finetune: FinetuneSettings
) -> tuple[CompressedModel, Result]:
    """The policy ``choose`` gives for ``target``, fine-tuned and measured; aims lower while the measurement
    misses the target (the last attempt is returned either way)."""
    refinement = evaluator.refinement(finetune)
    aim = target
    for _ in range(RETRIES):
        aim *= SAFETY
        compressed = evaluator.compress(choose(evaluator, aim), refinement)
        result = evaluator.measure(compressed, reuse_latency=False)
        if result.latency_ms <= target:
            break
    return compressed, result


def _fixed_row(
    evaluator: Evaluator, method: str, choose: Callable[[Evaluator, float], Policy], target: float, epochs: float
) -> dict:
    """Fine-tunes and measures the fixed policy for ``target`` (:func:`fixed_model`)."""
    compressed, result = fixed_model(evaluator, choose, target, final_finetune(evaluator, epochs))
    return {
        "method": method,
        "test_accuracy": evaluator.test_accuracy(compressed),
        "latency_ms": result.latency_ms,
        "mmacs": result.macs / 1e6,
        "params": result.params,
        "size_bytes": result.size_bytes,
        "predicted_ms": evaluator.predictor(compressed.model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="resnet")
    parser.add_argument("--device", default="cpu-b32")
    parser.add_argument("--targets", default="0.5,0.3", help="latency targets as fractions of the fp32 latency")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--searchers", default="tpe,nsga2,random,rl")
    parser.add_argument("--epochs", type=float, default=2.0, help="final fine-tune epochs, the same for every row")
    parser.add_argument("--latency-fill", type=float, default=0.95,
                        help="searched widths are scaled to this fraction of the target (0 = as proposed)")
    parser.add_argument("--proxy-steps", type=int, default=0,
                        help="fine-tune steps (lr 1e-3) per searched candidate before its val accuracy is read")
    args = parser.parse_args()

    task = load_task(args.task, progress=True)
    device = load_device(args.device)
    evaluator = Evaluator(task, device, EvaluatorSettings(latency="predicted"))
    fp32 = statistics.median(measure_latency(task.model, task.input_shape, device) for _ in range(3))
    runs = OUT_DIR / "b2_runs"
    shutil.rmtree(runs, ignore_errors=True)
    rows = []
    checks = []
    for fraction in (float(f) for f in args.targets.split(",")):
        target = fraction * fp32
        label = f"{fraction:.0%} ({target:.1f} ms)"
        for method, choose in (("uniform", uniform_policy), ("torch-pruning global magnitude", global_policy)):
            start = time.perf_counter()
            row = _fixed_row(evaluator, method, choose, target, args.epochs)
            seconds = round(time.perf_counter() - start, 1)
            rows.append({"target": label, "target_ms": target, **row, "evaluations": BISECTION_STEPS,
                         "seconds": seconds})
            print(rows[-1], file=sys.stderr)
        for searcher in args.searchers.split(","):
            start = time.perf_counter()
            outcome = run_search(
                task=args.task, device=args.device, searcher=searcher, trials=args.trials,
                target_latency=f"{target}ms", out=runs / f"{fraction:g}-{searcher}",
                space={"bits": [32], "sparsity_max": 0.0, "keep_step": 0.0625, "keep_min": 0.0625,
                       "latency_fill": args.latency_fill},
                evaluator={"latency": "predicted", "finetune_steps": args.proxy_steps, "finetune_lr": 1e-3},
                export={"finetune_epochs": args.epochs, "max_models": 4},
            )
            seconds = time.perf_counter() - start
            checks += [c.relative_error for c in outcome.latency_checks]
            if not outcome.models:
                rows.append({"target": label, "target_ms": target, "method": searcher,
                             "evaluations": len(outcome.trials), "seconds": round(seconds, 1)})
                continue
            best = max(outcome.models, key=lambda m: m.val_accuracy)
            rows.append({
                "target": label, "target_ms": target, "method": f"{searcher} (searched widths)",
                "test_accuracy": best.test_accuracy,
                "latency_ms": best.latency_ms, "mmacs": best.macs / 1e6, "params": best.params,
                "size_bytes": best.size_bytes,
                "predicted_ms": best.predicted_latency_ms, "evaluations": len(outcome.trials),
                "seconds": round(seconds, 1),
            })
            print(rows[-1], file=sys.stderr)
    frame = pd.DataFrame(rows)
    frame["latency_vs_fp32"] = frame["latency_ms"] / fp32
    frame["meets_target"] = frame["latency_ms"] <= frame["target_ms"]
    errors = pd.DataFrame([{
        "checked candidates": len(checks),
        "median abs error": f"{100 * statistics.median(checks):.1f}%" if checks else "-",
        "90th percentile": f"{100 * sorted(checks)[int(0.9 * (len(checks) - 1))]:.1f}%" if checks else "-",
    }])
    summary = (f"Task {args.task}, device {args.device}; fp32 latency {fp32:.2f} ms (median of 3).\n\n"
               f"{markdown_table(frame)}\n\nLatency predictor against real runs during the searches:\n\n"
               f"{markdown_table(errors)}")
    name = f"b2_latency_{args.task}_{args.device}" + (f"_proxy{args.proxy_steps}" if args.proxy_steps else "")
    write_outputs(name, frame, summary, args)


if __name__ == "__main__":
    main()
