"""B4: candidates evaluated per minute on LeNet-5, the project's search loop against a plain torch loop.

Both do per-layer magnitude pruning + per-channel linear quantization + a 1000-image validation
pass, with random per-layer choices. The project loop additionally packs every candidate into its
file format, decodes the evaluated model from those bytes, measures latency (once per distinct
architecture), counts MACs, and appends a row to trials.csv. Rounds alternate between the two
loops; the table reports medians over rounds and their ratio.

    python benchmarks/b4_throughput.py [--rounds 5] [--per-round 20]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, write_outputs  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.space import SearchSpace, SpaceSettings  # noqa: E402
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from search.archive import TrialArchive  # noqa: E402
from search.searchers import SEARCHERS  # noqa: E402


def plain_candidate(model: torch.nn.Module, val, rng: np.random.Generator, bits_choices: tuple[int, ...]) -> float:
    """Prune + quantize + evaluate in plain torch, no framework."""
    candidate = copy.deepcopy(model)
    with torch.no_grad():
        for module in candidate.modules():
            if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            weight = module.weight
            sparsity = 0.05 * int(rng.integers(0, 20))
            bits = int(rng.choice(bits_choices))
            flat = weight.abs().flatten()
            n_prune = int(sparsity * flat.numel())
            if n_prune:
                threshold = torch.kthvalue(flat, n_prune).values
                mask = (weight.abs() > threshold)
            else:
                mask = torch.ones_like(weight, dtype=torch.bool)
            if bits < 32:
                rows = weight.reshape(weight.shape[0], -1)
                kept = mask.reshape(weight.shape[0], -1)
                lo = torch.where(kept, rows, torch.inf).amin(dim=1, keepdim=True)
                hi = torch.where(kept, rows, -torch.inf).amax(dim=1, keepdim=True)
                step = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
                codes = torch.round((rows - lo) / step).clamp(0, 2**bits - 1)
                weight.copy_((lo + codes * step).view_as(weight))
            weight.mul_(mask)
    return evaluate_accuracy(candidate, val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()

    task = load_task("lenet5", progress=True)
    settings = SpaceSettings(channel_pruning=False)
    evaluator = Evaluator(task, load_device("cpu-b32"), EvaluatorSettings())
    space = SearchSpace(tuple(evaluator.layer_names), tuple(evaluator.leaders), settings)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        loops = {}
        for name in ("random", "tpe"):
            run_dir = Path(tmp) / name
            run_dir.mkdir()
            loops[name] = (SEARCHERS[name](space, Budget(), 0, run_dir), TrialArchive(run_dir / "trials.csv", Budget()))
        for round_index in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.per_round):
                plain_candidate(task.model, task.val, rng, settings.bits)
            row = {"round": round_index, "plain": args.per_round / (time.perf_counter() - start) * 60}
            for name, (searcher, archive) in loops.items():
                start = time.perf_counter()
                for _ in range(args.per_round):
                    proposal = searcher.ask()
                    result = evaluator.evaluate(proposal.policy)
                    archive.append(name, proposal.policy, result)
                    searcher.tell(proposal, result)
                row[name] = args.per_round / (time.perf_counter() - start) * 60
            rows.append(row)
            print(", ".join(f"{k} {v:.0f}" for k, v in row.items()), file=sys.stderr)
    frame = pd.DataFrame(rows)
    plain = median(frame.plain)
    lines = ["| loop | candidates / min: median (min-max) | overhead vs plain: of the medians "
             "| per round: median (min-max) |", "|---|---:|---:|---:|",
             f"| plain torch (prune + quantize + 1000-image eval) | {plain:.0f} "
             f"({frame.plain.min():.0f}-{frame.plain.max():.0f}) | - | - |"]
    for name in loops:
        rate = median(frame[name])
        per_round = 100 * (frame.plain / frame[name] - 1)
        lines.append(f"| project, {name} searcher (evaluator, packed file, latency, trials.csv"
                     f"{', study journal' if name == 'tpe' else ''}) | {rate:.0f} "
                     f"({frame[name].min():.0f}-{frame[name].max():.0f}) | {100 * (plain / rate - 1):.1f}% "
                     f"| {median(per_round):.1f}% ({per_round.min():.1f}-{per_round.max():.1f}%) |")
    summary = "\n".join(lines) + (
        f"\n\n{args.rounds} rounds x {args.per_round} candidates per loop, loops alternating within each round."
    )
    write_outputs("b4_throughput", frame, summary, args)


if __name__ == "__main__":
    main()
