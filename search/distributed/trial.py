"""The Tune trainable: evaluates one candidate, reporting each fidelity (fine-tune steps) it reaches."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import ray
import torch
from ray import tune

from core.budget import Budget
from core.policy import Policy
from core.result import Result
from envs.evaluator import Evaluator

POLICY_KEY = "policy"
"""Config key holding the candidate's policy JSON."""
STEPS_KEY = "finetune_steps"
"""Result key of the fidelity (ASHA's time attribute)."""
FINAL_KEY = "final"
"""Result key: True when the result is at the full fidelity."""
ACCURACY_KEY = "val_accuracy"
"""The single objective (TPE) and ASHA's metric."""
OBJECTIVES: tuple[tuple[str, str], ...] = (("val_accuracy", "max"), ("size_bytes", "min"), ("latency_ms", "min"))
"""NSGA-II's objectives and directions."""
EXCESS_KEYS: tuple[str, str] = ("size_excess", "latency_excess")
"""Result keys of the relative budget excesses (feasible when both are <= 0)."""
NODE_KEY = "node_id"
"""Result key: Ray node that ran the trial."""
LATENCY_NODE_KEY = "latency_node_id"
"""Result key: Ray node that measured the latency."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs; shipped once through the object store with ``tune.with_parameters``."""

    evaluator: Evaluator
    """The run's evaluator (task model and data included)."""
    budget: Budget
    """Size and latency budget."""
    fidelities: tuple[int, ...]
    """Fine-tune steps at which to report; the last is the full fine-tune."""
    threads: int
    """Torch intra-op threads of a trial."""


def trial_metrics(result: Result, budget: Budget, steps: int, final: bool, seconds: float) -> dict[str, Any]:
    """The numbers one ``tune.report`` carries."""
    size_excess, latency_excess = budget.violations(result.size_bytes, result.latency_ms)
    metrics = {k: v for k, v in result.to_dict().items() if k not in ("status", "error")}
    metrics.update({STEPS_KEY: steps, FINAL_KEY: final, "seconds": seconds,
                    EXCESS_KEYS[0]: size_excess, EXCESS_KEYS[1]: latency_excess})
    return metrics


def result_from_metrics(metrics: dict[str, Any], status: str, error: str = "") -> Result:
    """Rebuilds the evaluator's :class:`Result` from a reported metrics dict."""
    fields = ("val_accuracy", "size_bytes", "latency_ms", "macs", "params", "nonzero_weights", "seconds")
    return Result(status=status, error=error, runtime=str(metrics.get("runtime", "")),
                  **{name: metrics[name] for name in fields})


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Compresses the config's policy at each fidelity and reports validation accuracy, size and latency.

    An exception propagates to Tune, which retries the trial (``FailureConfig.max_failures``).
    """
    torch.set_num_threads(context.threads)
    start = time.perf_counter()
    evaluator = context.evaluator
    policy = Policy.from_json(config[POLICY_KEY])
    node = ray.get_runtime_context().get_node_id()
    for steps in context.fidelities:
        refinement = evaluator.refinement(replace(evaluator.settings.finetune, steps=steps))
        result = evaluator.measure(evaluator.compress(policy, refinement))
        metrics = trial_metrics(result, context.budget, steps, steps == context.fidelities[-1],
                                time.perf_counter() - start)
        metrics.update({NODE_KEY: node, LATENCY_NODE_KEY: getattr(evaluator, "last_latency_node", node)})
        tune.report(metrics)
