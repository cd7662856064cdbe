"""Peak memory of a search whose training set is far larger than memory: streamed against materialised.

The training set is MNIST-5k's 3,000 training digits, each drawn again with a random shift of up to 2 pixels and
Gaussian noise, made from the sample's index alone (:class:`GeneratedDigits`), so a set of any length exists
without being stored. Three runs of the same search (LeNet-5 with its cached weights, the same budget, searcher
and trials; validation and test are MNIST-5k's), each in its own process, whose peak resident memory
(``ru_maxrss`` from ``wait4``) is reported:

* **built-in**: the ``lenet5`` task as shipped (3,000 training samples in memory), the reference;
* **materialised**: a ``TensorDataset`` of ``--materialised`` generated samples, stacked in memory;
* **streamed**: a map-style dataset of ``--factor`` times this machine's available memory in virtual size
  (``MemAvailable`` of ``/proc/meminfo``), which the tool streams: every fine-tune step draws its batch, the
  search scores a fixed validation subset, calibration reads a bounded head.

The final fine-tune runs ``--steps`` steps in every run (``export.finetune_epochs`` is set per run from the
training set's length), so the three do the same work.

    python benchmarks/streamed_memory.py [--factor 10] [--materialised 150000] [--trials 6] [--steps 200]
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from envs.tasks import TaskDefinition, load_task, mnist_splits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BYTES = 1 * 28 * 28 * 4 + 8
"""Bytes of one generated sample held in memory (float32 image and int64 label)."""
BUDGET_MB = "0.1"
"""Size budget of every run (LeNet-5 is 1.72 MB in fp32)."""


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    train = mnist_splits()[0]
    return train.tensors[0], train.tensors[1]


class GeneratedDigits(Dataset):
    """``length`` MNIST digits, sample ``i`` being training digit ``i mod 3000`` shifted and noised with seed ``i``."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        images, labels = _digits()
        generator = torch.Generator().manual_seed(index)
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        image = torch.roll(images[index % len(images)], shifts=(dy, dx), dims=(1, 2))
        return image + 0.1 * torch.randn(image.shape, generator=generator), labels[index % len(labels)]


def available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def _task(train: Dataset) -> TaskDefinition:
    _, val, test = mnist_splits()
    model: nn.Module = load_task("lenet5").model
    return TaskDefinition(model=model, train=train, val=val, test=test, trained=True)


def streamed() -> TaskDefinition:
    """LeNet-5 with a generated training set of ``STREAMED_FACTOR`` x the available memory (virtual size)."""
    factor = float(os.environ.get("STREAMED_FACTOR", "10"))
    return _task(GeneratedDigits(int(factor * available_bytes() / SAMPLE_BYTES)))


def materialised() -> TaskDefinition:
    """LeNet-5 with ``MATERIALISED_SAMPLES`` generated training samples stacked in memory."""
    data = GeneratedDigits(int(os.environ.get("MATERIALISED_SAMPLES", "150000")))
    samples = [data[i] for i in range(len(data))]
    return _task(TensorDataset(torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])))


def run(task: str, samples: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    """One search in its own process; its peak RSS, wall time, the training set and the best exported model."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        epochs = args.steps * 64 / samples
        config.write_text(f"evaluator:\n  timing: inline\nexport:\n  finetune_epochs: {epochs!r}\n  max_models: 2\n")
        command = [sys.executable, str(ROOT / "search.py"), "--task", task, "--budget-mb", BUDGET_MB, "--searcher",
                   "random", "--trials", str(args.trials), "--out", str(Path(tmp) / "run"), "--config", str(config),
                   "--quiet"]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{task} failed with exit code {os.waitstatus_to_exitcode(status)}")
        with open(Path(tmp) / "run" / "pareto.csv", newline="") as handle:
            best = max(csv.DictReader(handle), key=lambda row: float(row["test_accuracy"]))
    return {
        "training set": task.rsplit(":", 1)[-1] if ":" in task else "built-in (in memory)",
        "train samples": samples,
        "train size (GB, if stacked)": samples * SAMPLE_BYTES / 1e9,
        "peak RSS (MB)": usage.ru_maxrss / 1024,
        "wall (s)": wall,
        "best test accuracy": float(best["test_accuracy"]),
        "its bytes": int(best["size_bytes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=10.0, help="streamed set / available memory (virtual)")
    parser.add_argument("--materialised", type=int, default=150_000, help="samples of the materialised set")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200, help="final fine-tune steps of every run")
    args = parser.parse_args()
    load_task("lenet5")  # its weights cached before any run is timed
    here = Path(__file__).resolve()
    virtual = int(args.factor * available_bytes() / SAMPLE_BYTES)
    rows = [
        run("lenet5", 3000, args, {}),
        run(f"{here}:materialised", args.materialised, args, {"MATERIALISED_SAMPLES": str(args.materialised)}),
        run(f"{here}:streamed", virtual, args, {"STREAMED_FACTOR": str(args.factor)}),
    ]
    frame = pd.DataFrame(rows)
    reference = float(frame["peak RSS (MB)"].iloc[0])
    frame["RSS / built-in"] = frame["peak RSS (MB)"] / reference
    summary = (f"Available memory: {available_bytes() / 1e9:.1f} GB; streamed set: {virtual:,} samples "
               f"({virtual * SAMPLE_BYTES / 1e9:,.0f} GB if stacked).\n\n{markdown_table(frame)}")
    write_outputs("streamed_memory", frame, summary, args)


if __name__ == "__main__":
    main()
