"""B5: distributed sweep throughput -- trials per minute of ``--searcher ray`` with 1 and 2 workers.

Each trial compresses a LeNet-5 candidate, fine-tunes it (masked, quantization-aware) for
``--finetune-steps`` steps, measures validation accuracy, the packed size and the latency (a Ray
task on the device's node), exactly as a search does; every trial has one CPU and one torch thread.
The scheduler is FIFO so that every trial does the same work (ASHA would stop some early and
make the rate depend on its decisions). One sweep is one ``Tuner.fit`` of ``--trials`` trials on a
local Ray cluster with 2 CPUs; its rate is trials / wall time, start-up of the trial actors included.
Rounds alternate the order of the 1- and 2-worker sweeps; the table reports medians and their ratio.

The script re-executes itself inside private network + PID namespaces (``unshare``), so the
cluster binds loopback only and every Ray process ends with it.

    python benchmarks/b5_distributed.py [--rounds 3] [--trials 16] [--finetune-steps 100]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, write_outputs  # noqa: E402

INSIDE = "AUTOCOMPRESS_B5_IN_NAMESPACE"
"""Set in the re-executed copy that runs inside the namespaces."""
WORKER_COUNTS = (1, 2)


def _reexec_in_namespace() -> int:
    """Runs this script again inside fresh user, network (loopback only) and PID namespaces."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        sys.exit("B5 needs unshare(1) and ip(8) to run its Ray cluster in a private network namespace")
    probe = subprocess.run(["unshare", "-rnpf", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"B5 cannot create private namespaces here: {probe.stderr.strip()}")
    inner = "ip link set lo up && exec " + shlex.join([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]])
    env = {**os.environ, INSIDE: "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(["unshare", "-rnpf", "--kill-child", "--mount-proc", "sh", "-c", inner], env=env).returncode


def _measure(args: argparse.Namespace) -> pd.DataFrame:
    from search.config import build_config
    from search.distributed.session import ray_session
    from search.drivers import driver_for
    from search.drivers.ray_tune import device_profiles
    from search.prepared import prepare

    config = build_config({
        "task": "lenet5", "searcher": "ray", "device": "cpu-b1", "trials": args.trials, "seed": 0,
        "evaluator": {"finetune_steps": args.finetune_steps},
        "searcher_options": {"scheduler": "fifo", "threads_per_trial": 1},
    })
    rows = []
    temp_dir = Path(tempfile.mkdtemp(prefix="b5", dir="/tmp"))
    try:
        with ray_session(None, device_profiles(config), cpus=max(WORKER_COUNTS)):
            prepared = prepare(config, progress=True)
            driver = driver_for(config)
            for round_index in range(args.rounds):
                order = WORKER_COUNTS if round_index % 2 == 0 else WORKER_COUNTS[::-1]
                row: dict[str, float] = {"round": round_index}
                for workers in order:
                    run_dir = temp_dir / f"round{round_index}-w{workers}"
                    run_dir.mkdir()
                    sized = replace(prepared, config=replace(config, workers=workers))
                    start = time.perf_counter()
                    trials = driver.search(sized, run_dir, progress=False)
                    elapsed = time.perf_counter() - start
                    assert len(trials) == args.trials, f"{len(trials)} rows in {run_dir}"
                    row[f"workers_{workers}"] = len(trials) / elapsed * 60
                print(", ".join(f"{k} {v:.1f}" for k, v in row.items()), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--finetune-steps", type=int, default=100)
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        sys.exit(_reexec_in_namespace())
    frame = _measure(args)
    one, two = median(frame.workers_1), median(frame.workers_2)
    summary = "\n".join([
        "| workers (1 CPU, 1 torch thread each) | trials / min (median) | speed-up |",
        "|---|---:|---:|",
        f"| 1 | {one:.1f} | 1.00x |",
        f"| 2 | {two:.1f} | {two / one:.2f}x |",
        "",
        f"{args.rounds} rounds x {args.trials} LeNet-5 trials per sweep, {args.finetune_steps} fine-tune steps per "
        "trial, FIFO scheduler, local Ray cluster with 2 CPUs in a private network namespace; the order of the "
        "two sweeps alternates between rounds. Machine: 2 cores, shared, so rates are noisy.",
    ])
    write_outputs("b5_distributed", frame, summary, args)


if __name__ == "__main__":
    main()
