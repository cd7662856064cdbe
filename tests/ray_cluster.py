"""Test harness: a real multi-node Ray cluster inside private network + PID namespaces.

Every process (head, workers, drivers) runs inside ``unshare -rnpf --kill-child --mount-proc sh -c ...``:
the network namespace has only loopback (nothing is reachable from outside), and when the shell
ends the kernel ends every process of the namespace, so no Ray process outlives a test. Processes
are never ended by name: scenario scripts end them by PID, inside the namespace only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD_PORT = 6390
"""GCS port of the head node (private to the namespace)."""
HEAD_ADDRESS = f"127.0.0.1:{HEAD_PORT}"
"""What drivers pass as ``--ray-address``."""
OBJECT_STORE_BYTES = 200_000_000
"""Object store per node; small, so a test cluster does not reserve gigabytes of /dev/shm."""
NAMESPACE = ["unshare", "-rnpf", "--kill-child", "--mount-proc"]


@dataclass(frozen=True)
class Node:
    """One Ray node of a test cluster."""

    cpus: int = 1
    """CPUs it offers."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources, e.g. a device's ``ray_resource``."""
    manager_port: int | None = None
    """Fixed raylet port, so a scenario can find (and kill) this node's raylet."""


def namespace_problem() -> str | None:
    """Why private namespaces cannot be created here (``None`` when they can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) to run the Ray cluster in a private network namespace"
    try:
        probe = subprocess.run(["unshare", "-rnpf", "--mount-proc", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a private user/network/PID namespace ({exc})"
    if probe.returncode != 0:
        return f"cannot create a private user/network/PID namespace: {probe.stderr.strip() or probe.returncode}"
    return None


def _ray_start(node: Node, head: bool, temp_dir: Path, log: Path) -> str:
    ray = shlex.quote(str(Path(sys.executable).parent / "ray"))
    args = [f"--num-cpus={node.cpus}", "--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats"]
    if node.resources:
        args.append("--resources=" + shlex.quote(json.dumps(node.resources)))
    if node.manager_port is not None:
        args.append(f"--node-manager-port={node.manager_port}")
    if head:
        args += [f"--port={HEAD_PORT}", f"--temp-dir={temp_dir}", "--include-dashboard=false"]
        where = "--head"
    else:
        where = f"--address={HEAD_ADDRESS}"
    return f"{ray} start {where} {' '.join(args)} >{shlex.quote(str(log))} 2>&1"


def cluster_script(nodes: Sequence[Node], temp_dir: Path, command: Sequence[str]) -> str:
    """The shell script run as PID 1 of the namespace: loopback up, head, workers, then ``command``."""
    lines = ["set -e", "ip link set lo up"]
    for index, node in enumerate(nodes):
        log = temp_dir / f"node{index}.log"
        lines.append(f"{_ray_start(node, index == 0, temp_dir, log)} || {{ cat {shlex.quote(str(log))}; exit 97; }}")
    lines.append(shlex.join([str(c) for c in command]))
    return "\n".join(lines)


@contextmanager
def ray_temp_dir() -> Iterator[Path]:
    """A short private ``--temp-dir`` under /tmp (Ray's socket paths have length limits), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_in_cluster(nodes: Sequence[Node], command: Sequence[str], cwd: Path,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Starts ``nodes`` (the first is the head) in a fresh namespace, runs ``command`` there, ends everything.

    The command sees the test's environment, with Ray's token authentication off (the namespace
    has no external interface) and this repository on ``PYTHONPATH``.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "CI": os.environ.get("CI", "true")}
    with ray_temp_dir() as temp_dir:
        script = cluster_script(nodes, temp_dir, command)
        return subprocess.run([*NAMESPACE, "sh", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
