"""``torch``: the decoded fp32 model itself, run eagerly by PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from envs.runtimes.base import Runtime


class TorchEager(Runtime):
    """Eager fp32 PyTorch: nothing to convert; a model on another device than the CPU is refused."""

    name = "torch"
    int8 = False
    tolerance = 0.0

    def build(
        self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        return model

    def timing_case(self, layer: nn.Module, example: torch.Tensor, threads: int) -> tuple[nn.Module, torch.Tensor]:
        """The layer itself on ``example``."""
        return layer, example
