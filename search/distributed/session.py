"""The Ray connection of a run: join a cluster (``--ray-address``) or start a loopback-only local one."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import ray

from core.errors import UsageError
from core.paths import PROJECT_ROOT
from envs.device import DeviceProfile
from search.distributed.options import parse_address

LOOPBACK = "127.0.0.1"
"""Where a local cluster binds all its ports."""
LOCAL_DEVICE_UNITS = 1.0
"""Amount of each device's custom resource on a local cluster."""
CONNECT_TIMEOUT_S = 5.0
"""Time allowed to open a TCP connection to the head node before giving up."""


def _local_ip_towards(host: str, port: int) -> str:
    """This machine's address on the route to ``host:port``, checking that the port accepts connections.

    Raises:
        UsageError: when nothing listens there.
    """
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as connection:
            return str(connection.getsockname()[0])
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"cannot reach a Ray cluster at {host}:{port} ({reason}); start one with `ray start --head` there, "
            "or drop --ray-address to run on a local cluster"
        ) from exc


def _check_resources(devices: Sequence[DeviceProfile], address: str) -> None:
    available = ray.cluster_resources()
    for device in devices:
        resource = device.ray_resource
        if resource is not None and available.get(resource, 0) <= 0:
            raise UsageError(
                f"no node of the Ray cluster at {address} offers the resource {resource!r} of device "
                f"{device.name!r}; start one with: ray start --address={address} --resources='{{\"{resource}\": 1}}'"
            )


def _init_options() -> dict[str, object]:
    return {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        # Trials import this project's packages; a cluster of identical machines finds them here.
        "job_config": ray.job_config.JobConfig(code_search_path=[str(PROJECT_ROOT)]),
    }


@contextmanager
def ray_session(address: str | None, devices: Sequence[DeviceProfile], cpus: int) -> Iterator[None]:
    """Connects to the cluster at ``address``, or starts a local one bound to loopback, for the block.

    A local cluster gets ``cpus`` CPUs and one unit of every device's custom resource. A connection
    that already exists (made by the caller) is used as it is and left open.

    Raises:
        UsageError: when the cluster cannot be reached or lacks a device's resource.
    """
    if ray.is_initialized():
        _check_resources(devices, address or "the current connection")
        yield
        return
    if address is None:
        resources = {d.ray_resource: LOCAL_DEVICE_UNITS for d in devices if d.ray_resource}
        ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=cpus, resources=resources, **_init_options())
    else:
        try:
            target = parse_address(address)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        node_ip = _local_ip_towards(*target) if target is not None else None
        try:
            ray.init(address=address, _node_ip_address=node_ip, **_init_options())
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"cannot connect to the Ray cluster at {address}: {first_line}") from exc
    try:
        _check_resources(devices, address or LOOPBACK)
        yield
    finally:
        ray.shutdown()
