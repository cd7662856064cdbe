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
from envs.device import load_device  # noqa: E402
from envs.evaluator import Evaluator, EvaluatorSettings  # noqa: E402
from envs.tasks import evaluate_accuracy, load_task  # noqa: E402
from search.archive import TrialArchive  # noqa: E402
from search.budget import Budget  # noqa: E402
from search.searchers import RandomSearcher  # noqa: E402
from search.space import SearchSpace, SpaceSettings  # noqa: E402


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
            mask = torch.ones_like(flat, dtype=torch.bool)
            if n_prune:
                mask[torch.argsort(flat, stable=True)[:n_prune]] = False
            mask = mask.view_as(weight)
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
    searcher = RandomSearcher(space, Budget(), seed=0)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = TrialArchive(Path(tmp) / "trials.csv", Budget())
        for round_index in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.per_round):
                plain_candidate(task.model, task.val, rng, settings.bits)
            plain = args.per_round / (time.perf_counter() - start) * 60
            start = time.perf_counter()
            for _ in range(args.per_round):
                proposal = searcher.ask()
                result = evaluator.evaluate(proposal.policy)
                archive.append("random", proposal.policy, result)
                searcher.tell(proposal, result)
            project = args.per_round / (time.perf_counter() - start) * 60
            rows.append({"round": round_index, "plain_per_min": plain, "project_per_min": project})
            print(f"round {round_index}: plain {plain:.0f}/min, project {project:.0f}/min", file=sys.stderr)
    frame = pd.DataFrame(rows)
    plain, project = median(frame.plain_per_min), median(frame.project_per_min)
    summary = (
        "| loop | candidates / min (median) |\n|---|---:|\n"
        f"| plain torch (prune + quantize + 1000-image eval) | {plain:.0f} |\n"
        f"| project (random searcher, evaluator, packed file, latency, trials.csv) | {project:.0f} |\n\n"
        f"Overhead: {100 * (plain / project - 1):.1f}% (ratio plain/project {plain / project:.2f}), "
        f"{args.rounds} rounds x {args.per_round} candidates each, alternating."
    )
    path = write_outputs("b4_throughput", frame, summary,
                         f"python benchmarks/b4_throughput.py --rounds {args.rounds} --per-round {args.per_round}")
    print(summary)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
