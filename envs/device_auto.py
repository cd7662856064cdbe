"""``--device auto``: profile this machine once and cache the resulting device profile.

The profile uses every CPU core this process may run on, batches of 32, and the fastest runtime on a
reference CNN (each runtime of :data:`envs.runtimes.RUNTIMES` this machine can run), timed side by side in
alternating rounds.
It is written as YAML to ``<cache>/devices/auto-<machine>.yaml`` (``<cache>`` is ``$AUTOCOMPRESS_CACHE``
or ``~/.cache/autocompress``) and read from there afterwards; delete the file to profile again.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch
import yaml
from torch import nn

from core.paths import default_cache_dir
from envs.profile import DeviceProfile, read_profile
from envs.runtimes import RUNTIMES, RuntimeConversionError, runnable_for
from envs.timing import time_forward

AUTO_DEVICE = "auto"
"""Device name that profiles this machine once and caches the profile."""
AUTO_BATCH = 32
ROUNDS = 5


def machine_key() -> str:
    """A short hash of what makes timings differ between machines (CPU, cores, PyTorch build)."""
    text = f"{platform.machine()}|{platform.processor()}|{os.cpu_count()}|{_cores()}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def reference_cnn() -> nn.Module:
    """A small ResNet-like stack on 1x28x28 inputs, typical of the built-in tasks."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).eval()


def profile_machine(name: str = AUTO_DEVICE, rounds: int = ROUNDS) -> tuple[DeviceProfile, dict[str, float]]:
    """Times the reference CNN on every runtime on all cores; the fastest goes into the profile.

    Args:
        name: the profile's name.
        rounds: alternating timing rounds per runtime (each a median of the profile's repeats).

    Returns:
        The profile and the median milliseconds per runtime.
    """
    threads = _cores()
    base = DeviceProfile(name=name, threads=threads, batch=AUTO_BATCH, warmup=3, repeats=10)
    example = torch.randn(AUTO_BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = reference_cnn()
    runs = {}
    for runtime, engine in RUNTIMES.items():
        if engine.unavailable():  # e.g. a PyTorch build without the x86 quantized engine
            continue
        try:
            runs[runtime] = runnable_for(model, replace(base, runtime=runtime), (1, 28, 28), example)
        except RuntimeConversionError:
            continue  # the reference CNN is not one this runtime can take
    times: dict[str, list[float]] = {runtime: [] for runtime in runs}
    for _ in range(rounds):
        for runtime, runnable in runs.items():
            times[runtime].append(time_forward(runnable, example, base))
    medians = {runtime: statistics.median(values) for runtime, values in times.items()}
    runtime = min(medians, key=medians.__getitem__)
    measured = ", ".join(f"{r} {ms:.2f} ms" for r, ms in medians.items())
    profile = DeviceProfile(
        name=name, runtime=runtime, threads=threads, batch=AUTO_BATCH, warmup=3, repeats=10,
        description=f"this machine, profiled {date.today()}: reference CNN at batch {AUTO_BATCH}: {measured}",
    )
    return profile, medians


def auto_device(cache_dir: Path | None = None, rounds: int = ROUNDS) -> DeviceProfile:
    """This machine's profile: read from the cache, or profiled now (``rounds`` per runtime) and written there."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "devices" / f"{AUTO_DEVICE}-{machine_key()}.yaml"
    if path.is_file():
        return read_profile(path, AUTO_DEVICE)
    profile, _ = profile_machine(rounds=rounds)
    data = profile.to_dict()
    data.pop("name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"# Written by --device auto; delete this file to profile the machine again.\n"
                   f"{yaml.safe_dump(data, sort_keys=False)}")
    tmp.replace(path)
    return profile
