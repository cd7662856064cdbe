"""Scenario driver for the Ray tests; runs INSIDE the test namespace (see tests/ray_cluster.py).

    python tests/ray_scenarios.py SCENARIO --report OUT.json [--rows K] [--port P] -- SEARCH_ARGS...

Scenarios (SEARCH_ARGS are passed to search.py and must contain ``--out RUN``):
    run          run the search once
    kill-worker  run it; once RUN/trials.csv has K rows, SIGKILL the raylet listening on port P
    kill-driver  run it; once RUN/trials.csv has K rows, SIGKILL the driver, then ``--resume RUN``

The report holds each search.py invocation's exit code and output, the row count at the kill,
and the cluster's nodes (id, resources, raylet port, alive) read through ``ray.nodes()``.
Processes are only ever killed by PID, and only inside the namespace.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAD_ADDRESS = "127.0.0.1:6390"
WAIT_S = 240.0


def _search(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "search.py"), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr[-20_000:]}


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def _wait_for_rows(path: Path, count: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.time() + WAIT_S
    while time.time() < deadline and proc.poll() is None:
        rows = _rows(path)
        if rows >= count:
            return rows
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not reach {count} rows (search exited: {proc.poll()})")


def _raylet_pid(port: int) -> int:
    """PID of the raylet started with ``--node-manager-port=port`` (this PID namespace only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"raylet") and f"--node_manager_port={port}".encode() in argv:
            return int(entry.name)
    raise RuntimeError(f"no raylet with node manager port {port}")


def _nodes() -> list[dict[str, Any]]:
    import ray

    ray.init(address=HEAD_ADDRESS, logging_level="ERROR", log_to_driver=False)
    try:
        return [{"id": n["NodeID"], "alive": n["Alive"], "port": n["NodeManagerPort"], "resources": n["Resources"]}
                for n in ray.nodes()]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["run", "kill-worker", "kill-driver"])
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--port", type=int)
    split = sys.argv.index("--")
    args = parser.parse_args(sys.argv[1:split])
    search_args = sys.argv[split + 1 :]
    run_dir = Path(search_args[search_args.index("--out") + 1])
    report: dict[str, Any] = {}
    proc = _search(search_args)
    if args.scenario == "kill-worker":
        report["rows_at_kill"] = _wait_for_rows(run_dir / "trials.csv", args.rows, proc)
        os.kill(_raylet_pid(args.port), signal.SIGKILL)
    elif args.scenario == "kill-driver":
        report["rows_at_kill"] = _wait_for_rows(run_dir / "trials.csv", args.rows, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        report["trials_at_kill"] = (run_dir / "trials.csv").read_text()
        proc = _search(["--resume", str(run_dir), "--quiet"])
    report["search"] = _finish(proc)
    report["nodes"] = _nodes()
    args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
