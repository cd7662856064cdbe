"""Accuracy of the per-device latency model on random channel widths, per task and device profile.

For each task and device, the latency model is built (or read from the cache), then ``--samples`` models
with a random kept fraction per channel group (uniform in ``[--low, 1]``, seeded) are predicted and
measured for real (on an int8 device: converted to int8 first, as the search runs them). Reported per
task and device: the median and 90th percentile of ``|predicted - measured| / measured``, the mean signed
error (bias), and the median relative difference between two back-to-back measurements of the same model
(the machine's own noise, a floor for any predictor).

    python benchmarks/latency_model_error.py [--tasks resnet,mobilenet] [--devices cpu-b32,cpu-b1,cpu-int8]
        [--samples 20] [--low 0.0625]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from methods.structured import prune_channels  # noqa: E402


def errors(evaluator: Evaluator, samples: int, low: float, seed: int = 0) -> dict:
    """Prediction errors and measurement noise over ``samples`` random width settings."""
    task = evaluator.task
    predictor = evaluator.predictor
    rng = random.Random(seed)
    relative, noise = [], []
    for _ in range(samples):
        model = copy.deepcopy(task.model).eval()
        widths = {leader: rng.uniform(low, 1.0) for leader in evaluator.leaders}
        prune_channels(model, task.input_shape, widths, evaluator.device.channel_multiple)
        predicted = predictor(model)
        runnable = evaluator.runnable(model)
        first, second = evaluator.time_on_device(runnable), evaluator.time_on_device(runnable)
        relative.append((predicted - first) / first)
        noise.append(abs(second - first) / first)
    absolute = np.abs(relative)
    return {
        "samples": samples,
        "median abs error": float(np.median(absolute)),
        "90th percentile": float(np.quantile(absolute, 0.9)),
        "mean signed error": float(np.mean(relative)),
        "median re-measurement noise": float(statistics.median(noise)),
        "fitted a (ms)": predictor.overhead.intercept_ms,
        "fitted s": predictor.overhead.layer_scale,
        "fitted b (ns per activation)": 1e6 * predictor.overhead.per_activation_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="resnet,mobilenet")
    parser.add_argument("--devices", default="cpu-b32,cpu-b1,cpu-int8")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--low", type=float, default=0.0625, help="smallest kept fraction drawn per group")
    args = parser.parse_args()
    rows = []
    for task_name in args.tasks.split(","):
        task = load_task(task_name, progress=True)
        for device_name in args.devices.split(","):
            evaluator = Evaluator(task, load_device(device_name), EvaluatorSettings(latency="predicted"))
            rows.append({"task": task_name, "device": device_name, **errors(evaluator, args.samples, args.low)})
            print(rows[-1], file=sys.stderr)
    frame = pd.DataFrame(rows)
    shown = frame.copy()
    for column in ("median abs error", "90th percentile", "mean signed error", "median re-measurement noise"):
        shown[column] = [f"{100 * v:+.1f}%" if "signed" in column else f"{100 * v:.1f}%" for v in frame[column]]
    summary = (f"Random kept fraction per channel group in [{args.low}, 1], {args.samples} models per row; "
               f"latency model `a + s * sum(table) + b * activations`.\n\n{markdown_table(shown)}")
    write_outputs("latency_model_error", frame, summary, args)


if __name__ == "__main__":
    main()
