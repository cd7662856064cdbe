"""Where training, fine-tuning, calibration and metric evaluation run: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

Latency is always measured on the device profile (``envs/``); the compute device only does the arithmetic of
learning and scoring. Models and batches move there for the work and back to the CPU afterwards, where packing,
decoding and timing happen.
"""

from __future__ import annotations

import re

import torch

from core.errors import UsageError

COMPUTE_CHOICES = "cpu, cuda, cuda:N or mps"
"""What ``--compute`` takes."""


def compute_device(name: str) -> torch.device:
    """The torch device ``name`` names, checked to exist on this machine.

    Raises:
        UsageError: an unknown name, or a GPU this machine does not have (one line saying what to use instead).
    """
    text = str(name).strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise UsageError(f"unknown compute device {name!r}; use {COMPUTE_CHOICES}")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--compute {text}: this machine has no CUDA GPU that torch can use; use --compute cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--compute {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--compute mps: Apple's Metal backend is not available here; use --compute cpu")
    return device

