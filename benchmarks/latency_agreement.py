"""Latency agreement: the same architecture timed during the search, at export, and in a fresh process.

For random channel-pruned policies of each task, side by side in one run:

- ``search``: the evaluator's latency as the search takes it (timing worker, as configured by default), after the
  searching process has fine-tuned a candidate (as it does before timing each architecture in a real run);
- ``export``: the same architecture timed again later through the evaluator, as the export does;
- ``inline``: timed inside the searching process (``evaluator.timing: inline``), the protocol before the worker;
- ``fresh``: the packed file loaded with ``load_model`` in a new Python process and timed there, as a user
  deploying it would (with the allocator settings of ``envs.timing.ALLOCATOR_ENV``, which the README asks a
  deployment to use).

The table gives, per task, the median absolute relative difference of each against ``fresh`` and of ``search``
against ``export``, and the share of files whose fresh-process latency is within the search's figure plus its
spread.

    python benchmarks/latency_agreement.py [--tasks resnet,mobilenet] [--policies 8] [--device cpu-b32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median, write_outputs  # noqa: E402
from core.policy import LayerChoice, Policy  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import load_task  # noqa: E402
from envs.timing import allocator_env  # noqa: E402
from methods.finetune import FinetuneSettings  # noqa: E402
from methods.packing import write_packed  # noqa: E402

FRESH = """
import json, sys
from envs.device import load_device
from envs.timing import measure
from search import load_model
model = load_model(sys.argv[1])
latency = measure(model, json.loads(sys.argv[3]), load_device(sys.argv[2]))
print(json.dumps([latency.ms, latency.spread_ms]))
"""
"""Run as ``python -c FRESH FILE DEVICE INPUT_SHAPE`` in a new process."""


def fresh_latency(path: Path, device: str, input_shape: tuple[int, ...]) -> float:
    """Latency of the packed file loaded and timed in a new Python process."""
    proc = subprocess.run([sys.executable, "-c", FRESH, str(path), device, json.dumps(list(input_shape))],
                          capture_output=True, text=True, cwd=ROOT, check=True, stdin=subprocess.DEVNULL,
                          env=allocator_env(dict(os.environ)))
    return float(json.loads(proc.stdout.strip().splitlines()[-1])[0])


def random_policy(space: SearchSpace, rng: np.random.Generator) -> Policy:
    """Random keep ratios on the keep grid for every leader, 8-bit codes everywhere."""
    low, high, step = space.keep_grid()
    grid = np.arange(low, high + 1e-9, step)
    return Policy.from_choices({
        name: LayerChoice(bits=8, keep=float(rng.choice(grid)) if name in space.leaders else 1.0)
        for name in space.layers
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="resnet,mobilenet")
    parser.add_argument("--policies", type=int, default=8)
    parser.add_argument("--device", default="cpu-b32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = load_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks.split(","):
            task = load_task(task_name, progress=True)
            worker = Evaluator(task, device, EvaluatorSettings())
            inline = Evaluator(task, device, EvaluatorSettings(timing="inline"))
            space = SearchSpace(tuple(worker.layer_names), tuple(worker.leaders), SpaceSettings())
            rng = np.random.default_rng(args.seed)
            busy = worker.refinement(FinetuneSettings(steps=20, lr=1e-4))
            for number in range(args.policies):
                policy = random_policy(space, rng)
                worker.compress(policy, busy)  # the searching process fine-tunes, as before timing in a run
                compressed = worker.compress(policy)
                search = worker.latency(compressed.model, reuse=False)
                in_process = inline.latency(compressed.model, reuse=False)
                path = Path(tmp) / f"{task_name}-{number}.acz"
                write_packed(path, compressed.blob)
                fresh = fresh_latency(path, args.device, task.input_shape)
                export = worker.latency(compressed.model, reuse=False)
                rows.append({"task": task_name, "policy": number, "search_ms": search.ms,
                             "search_spread_ms": search.spread_ms, "export_ms": export.ms, "inline_ms": in_process.ms,
                             "fresh_ms": fresh})
                print(rows[-1], file=sys.stderr)
            worker.close()
    frame = pd.DataFrame(rows)
    lines = ["| task | policies | search vs export | search vs fresh | inline vs fresh "
             "| fresh within search + spread |", "|---|---:|---:|---:|---:|---:|"]
    for task_name, group in frame.groupby("task", sort=False):
        def rel(a: str, b: str, frame: pd.DataFrame = group) -> str:
            return f"{100 * median((frame[a] - frame[b]).abs() / frame[b]):.1f}%"

        within = float(np.mean(group.fresh_ms <= group.search_ms + group.search_spread_ms))
        lines.append(f"| {task_name} | {len(group)} | {rel('search_ms', 'export_ms')} | {rel('search_ms', 'fresh_ms')} "
                     f"| {rel('inline_ms', 'fresh_ms')} | {within:.0%} |")
    summary = "\n".join(lines) + (
        "\n\nMedian absolute relative differences. search/export: the timing worker (the default); inline: the "
        "searching process, just after a 20-step fine-tune; fresh: `load_model` and the same protocol in a new process."
    )
    write_outputs("latency_agreement", frame, summary, args)


if __name__ == "__main__":
    main()
