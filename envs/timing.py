"""Latency measured by running the model with a device profile's batch, threads, warm-up and repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from envs.profile import DeviceProfile


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile) -> float:
    """Median wall time in milliseconds of one forward pass at the profile's batch and threads."""
    shape = device.input_shape or tuple(input_shape)
    example = torch.randn(device.batch, *shape, generator=torch.Generator().manual_seed(0))
    return time_forward(model, example, device)


def time_forward(model: nn.Module, example: torch.Tensor, device: DeviceProfile) -> float:
    """Median wall time in milliseconds of ``model(example)`` with the profile's threads, warm-up and repeats."""
    previous_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(device.threads)
    try:
        with torch.inference_mode():
            for _ in range(device.warmup):
                model(example)
            times = []
            for _ in range(device.repeats):
                start = time.perf_counter()
                model(example)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return 1000.0 * statistics.median(times)
