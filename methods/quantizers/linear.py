"""``linear``: per-output-channel affine codes (``methods/quantization.py``), trained straight-through.

File segments: float16 ``lo`` and ``step`` per output channel, then the codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from methods import quantization
from methods.quantizers.base import Codes, Quantizer


class StraightThrough(nn.Module):
    """Parametrization: the weight quantize-dequantized on every forward, identity gradient at kept positions."""

    def __init__(self, mask: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return quantization.fake_quantize(weight, self.mask, self.bits)


def _on_grid(values: np.ndarray, levels: int) -> bool:
    """True when the ascending ``values`` lie on ``levels + 1`` evenly spaced points, up to float32 rounding."""
    if values.size <= 2:
        return True
    span = values[-1] - values[0]
    tolerance = 8 * float(np.finfo(np.float32).eps) * (np.abs(values).max() + span)
    steps = np.arange(1, levels + 1, dtype=np.float64)  # the grid spans 1 .. levels steps
    positions = np.outer(values - values[0], steps / span)
    off_grid = np.abs(positions - np.rint(positions)) * (span / steps)
    return values.size <= levels + 1 and bool((off_grid <= tolerance).all(axis=0).any())


class LinearQuantizer(Quantizer):
    """``lo + code * step`` per output channel, ``lo``/``step`` in float16 (see ``methods/quantization.py``)."""

    per_channel = True

    def quantize_dequantize(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
        quantization.check_bits(bits)
        return quantization.quantize_dequantize(weight, mask, bits)

    def parametrization(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> nn.Module:
        return StraightThrough(mask, bits)

    def on_codes(self, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
        channels = quantization.channel_count(stored.shape)
        values = stored.detach().cpu().to(torch.float64).numpy().reshape(channels, -1)
        kept = mask.cpu().numpy().reshape(channels, -1)
        return all(_on_grid(np.unique(row[keep]), 2**bits - 1) for row, keep in zip(values, kept, strict=True))

    def encode(self, weight: torch.Tensor, mask: torch.Tensor, bits: int, positions: np.ndarray | None) -> Codes:
        q = quantization.quantize(weight, mask, bits, positions=positions)
        return Codes(q.codes, (q.lo.astype("<f2").tobytes(), q.step.astype("<f2").tobytes()))

    def table_sizes(self, entry: Mapping[str, Any], shape: tuple[int, ...], bits: int) -> list[int]:
        channels = quantization.channel_count(shape)
        return [2 * channels, 2 * channels]

    def decode(self, codes: Codes, mask: torch.Tensor, bits: int) -> torch.Tensor:
        lo, step = (np.frombuffer(table, dtype="<f2").astype(np.float16) for table in codes.tables)
        q = quantization.QuantizedWeight(codes=codes.symbols, lo=lo, step=step, bits=bits, shape=tuple(mask.shape))
        return quantization.dequantize(q, mask)

    def table_bytes_upper(self, kept: int, bits: int, channels: int) -> int:
        return 4 * channels
