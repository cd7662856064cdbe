"""``kmeans``: one shared float32 codebook per layer (Deep Compression weight sharing, ``methods/kmeans.py``).

Fine-tuning trains the shared values: the codes stay fixed and each centroid moves with the sum of its
weights' gradients. File segments: the codebook (at most ``2**bits`` float32 values), then the codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from methods import kmeans
from methods.quantizers.base import Codes, Quantizer


class SharedValues(nn.Module):
    """Parametrization: the weight is ``centroids[codes]`` on kept positions, ``+0.0`` elsewhere.

    Built from a weight that is already shared (at most ``2**bits`` distinct kept values): the codes are
    fixed and the centroids are trainable parameters.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        values, codes = torch.unique(weight.detach()[mask], return_inverse=True)
        self.centroids = nn.Parameter(values.detach().clone())
        self.register_buffer("codes", codes)
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(weight)
        out[self.mask] = self.centroids[self.codes]
        return out


def _codebook(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codebook and codes of kept values; exact when they already take at most ``2**bits`` values."""
    distinct = np.unique(values)
    if distinct.size <= 2**bits:
        return distinct.astype(np.float32), np.searchsorted(distinct, values).astype(np.uint8)
    return kmeans.kmeans_codebook(values, bits)


class KMeansQuantizer(Quantizer):
    """Every kept weight is one of at most ``2**bits`` shared float32 values of its layer."""

    def quantize_dequantize(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
        return kmeans.kmeans_dequantize(kmeans.kmeans_quantize(weight, mask, bits), mask)

    def parametrization(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> nn.Module:
        return SharedValues(weight, mask)

    def on_codes(self, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
        return int(torch.unique(stored.detach()[mask]).numel()) <= 2**bits

    def encode(self, weight: torch.Tensor, mask: torch.Tensor, bits: int, positions: np.ndarray | None) -> Codes:
        values = weight.to(torch.float32).numpy().reshape(-1)
        values = values if positions is None else values.take(positions)
        centroids, codes = _codebook(values, bits)
        return Codes(codes, (centroids.astype("<f4").tobytes(),), {"centroids": int(centroids.size)})

    def table_sizes(self, entry: Mapping[str, Any], shape: tuple[int, ...], bits: int) -> list[int]:
        centroids = int(entry["centroids"])
        least = 1 if int(entry["kept"]) else 0
        if not least <= centroids <= 2**bits:
            raise ValueError(f"{centroids} centroids for {bits}-bit codes")
        return [4 * centroids]

    def decode(self, codes: Codes, mask: torch.Tensor, bits: int) -> torch.Tensor:
        centroids = np.frombuffer(codes.tables[0], dtype="<f4").astype(np.float32)
        return kmeans.kmeans_dequantize(kmeans.SharedWeight(centroids, codes.symbols, tuple(mask.shape)), mask)

    def table_bytes_upper(self, kept: int, bits: int, channels: int) -> int:
        return 4 * min(2**bits, kept)
