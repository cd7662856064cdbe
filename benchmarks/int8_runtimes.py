"""Which int8 runtime to run compressed models on: PyTorch's x86 static int8 against ONNX Runtime's.

For each task, at full width and at a uniform channel keep (``--keeps``; BatchNorm recalibrated, no
fine-tune), four executions of the same model are timed side by side at a device profile's batch and
threads (interleaved rounds, medians):

* ``torch fp32``: eager PyTorch (the ``torch`` runtime);
* ``torch int8``: FX static int8 on the x86 (fbgemm) backend, as ``methods/int8.py`` builds it (the
  ``torch-int8`` runtime);
* ``onnxruntime fp32``: the model exported to ONNX (opset 17), all graph optimisations on;
* ``onnxruntime int8``: ONNX Runtime static QDQ quantization of that export (per-channel int8 weights,
  uint8 activations, ranges from the same calibration images), all graph optimisations on.

Columns: test accuracy, median latency, and its ratio to torch fp32. The conversions are the device
runtimes' own (``envs/runtimes/``).

    python benchmarks/int8_runtimes.py [--tasks resnet,mobilenet] [--device cpu-int8] [--keeps 1.0,0.5]
        [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, median, write_outputs  # noqa: E402
from envs.device import DeviceProfile, load_device, time_forward  # noqa: E402
from envs.runtimes import runnable_for  # noqa: E402
from envs.tasks import Task, evaluate_accuracy, load_task  # noqa: E402
from methods.finetune import recalibrate_batchnorm  # noqa: E402
from methods.structured import channel_groups, prune_channels  # noqa: E402

CALIBRATION_IMAGES = 500
"""Training images that set the activation ranges of both int8 runtimes (as the evaluator uses)."""
RUNTIME_LABELS = {
    "torch fp32": "torch", "torch int8": "torch-int8",
    "onnxruntime fp32": "onnxruntime", "onnxruntime int8": "onnxruntime-int8",
}


def compare(task: Task, keep: float, device: DeviceProfile, rounds: int) -> list[dict]:
    """The four executions of ``task``'s model at ``keep``: accuracy and median latency."""
    model = copy.deepcopy(task.model).eval()
    if keep < 1.0:  # no fine-tune here: BatchNorm statistics are re-estimated so the accuracy means something
        leaders = [group.leader for group in channel_groups(model, task.input_shape)]
        prune_channels(model, task.input_shape, {leader: keep for leader in leaders}, device.channel_multiple)
        recalibrate_batchnorm(model, task.train.tensors[0])
        model.eval()
    calibration = task.train.tensors[0][:CALIBRATION_IMAGES]
    runs = {
        label: runnable_for(model, replace(device, runtime=runtime), task.input_shape, calibration)
        for label, runtime in RUNTIME_LABELS.items()
    }
    accuracy = {name: evaluate_accuracy(runnable, task.test) for name, runnable in runs.items()}
    example = torch.randn(device.batch, *task.input_shape, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, runnable in runs.items():
            times[name].append(time_forward(runnable, example, device))
    base = median(times["torch fp32"])
    return [{"task": task.name, "keep": keep, "runtime": name, "test_accuracy": accuracy[name],
             "latency_ms": median(times[name]), "vs_torch_fp32": median(times[name]) / base,
             "spread_ms": float(np.max(times[name]) - np.min(times[name]))} for name in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="resnet,mobilenet")
    parser.add_argument("--device", default="cpu-int8", help="profile whose batch, threads and repeats are used")
    parser.add_argument("--keeps", default="1.0,0.5", help="uniform channel-keep ratios to compare at")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (medians are reported)")
    args = parser.parse_args()
    device = load_device(args.device)
    rows = []
    for name in args.tasks.split(","):
        task = load_task(name, progress=True)
        for keep in (float(k) for k in args.keeps.split(",")):
            rows += compare(task, keep, device, args.rounds)
            print(markdown_table(pd.DataFrame(rows[-4:])), file=sys.stderr)
    frame = pd.DataFrame(rows)
    summary = (f"Device profile {device.name}: batch {device.batch}, {device.threads} threads, medians of "
               f"{args.rounds} interleaved rounds of {device.repeats} runs.\n\n{markdown_table(frame)}")
    write_outputs("int8_runtimes", frame, summary, args)


if __name__ == "__main__":
    main()
