"""``hashed``: HashedNets (Chen et al., 2015), each kept weight is a signed copy of one of ``K`` shared values.

The position of a weight in its tensor picks its bucket and its sign through a fixed hash, so the file holds the
``K`` float32 bucket values and a 32-bit seed, and no per-weight code: ``w[p] = sign(p) * value[bucket(p)]``.
Here ``bits`` is the storage per kept weight: ``K = ceil(kept * bits / 32)`` buckets, so ``bits`` 1-8 is a
compression factor of 32x-4x on the kept weights, chosen per layer by the searchers like any code width.
Pruned weights (a mask) are not hashed; the packer's sparse index holds them as for every quantizer.

Projection onto the buckets is the least-squares fit (each bucket's value is the mean of its signed weights);
fine-tuning trains the bucket values (:class:`HashedValues`: the gradient of a value is the signed sum of its
weights' gradients, the paper's backward pass). File segments: the bucket values; no codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.quantizers.base import Codes, Quantizer

SEED = 0x5EED
"""Hash seed written by the encoder; the file stores it, so a decoder reads any seed."""
_MASK64 = np.uint64(2**64 - 1)


def bucket_count(kept: int, bits: int) -> int:
    """Buckets of a layer with ``kept`` weights at ``bits`` bits per kept weight (at least 1 when any are kept)."""
    return 0 if kept == 0 else max(1, -(-kept * bits // 32))


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed 64-bit hash of each uint64 value (wrapping arithmetic)."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def hash_positions(positions: np.ndarray, buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket (``int64`` in ``[0, buckets)``) and sign (``float32`` +-1) of each flat weight position."""
    mixed = _mix(positions.astype(np.uint64) ^ _mix(np.array([seed], dtype=np.uint64)))
    bucket = (mixed % np.uint64(max(buckets, 1))).astype(np.int64)
    sign = np.where((mixed >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
    return bucket, sign


def _hashes(mask: torch.Tensor, bits: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Bucket and sign of each kept weight (row-major order of the kept positions) and the bucket count."""
    positions = np.flatnonzero(mask.detach().cpu().numpy().reshape(-1))
    buckets = bucket_count(positions.size, bits)
    bucket, sign = hash_positions(positions, buckets, seed)
    return torch.from_numpy(bucket), torch.from_numpy(sign), buckets


def _expand(values: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The stored weight: ``sign * values[bucket]`` on kept positions, ``+0.0`` elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    if bucket.numel():
        out[mask] = values[bucket] * sign
    return out


def _project(weight: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, buckets: int) -> torch.Tensor:
    """Least-squares bucket values: the mean of each bucket's signed kept weights (0 for an empty bucket)."""
    signed = weight.to(torch.float32) * sign
    total = torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, signed.to(torch.float64))
    count = torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, torch.ones_like(total[bucket]))
    return (total / count.clamp(min=1)).to(torch.float32)


class HashedValues(nn.Module):
    """Parametrization: the weight is ``sign * values[bucket]`` on kept positions, ``+0.0`` elsewhere.

    Built from a weight that is already stored (its signed kept weights agree within each bucket); the bucket
    values are the trainable parameters.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> None:
        super().__init__()
        bucket, sign, buckets = _hashes(mask, bits)
        values = _project(weight.detach().cpu()[mask.cpu()], bucket, sign, buckets)
        self.values = nn.Parameter(values.to(weight.device))
        self.register_buffer("bucket", bucket.to(weight.device))
        self.register_buffer("sign", sign.to(weight.device))
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(weight)
        if self.bucket.numel():
            out[self.mask] = self.values[self.bucket] * self.sign
        return out


class HashedQuantizer(Quantizer):
    """Kept weights share ``ceil(kept * bits / 32)`` values through a hash of their positions (HashedNets)."""

    stores_codes = False

    def quantize_dequantize(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
        weight, mask = weight.detach().cpu(), mask.cpu()
        bucket, sign, buckets = _hashes(mask, bits)
        return _expand(_project(weight[mask], bucket, sign, buckets), bucket, sign, mask)

    def parametrization(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> nn.Module:
        return HashedValues(weight, mask, bits)

    def on_codes(self, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
        stored, mask = stored.detach().cpu().to(torch.float32), mask.cpu()
        bucket, sign, buckets = _hashes(mask, bits)
        signed = stored[mask] * sign
        values = torch.zeros(buckets).index_copy_(0, bucket, signed)  # one signed weight per bucket
        return bool(torch.equal(values[bucket], signed))

    def max_distinct(self, kept: int, bits: int) -> int:
        return 2 * bucket_count(kept, bits)

    def encode(self, weight: torch.Tensor, mask: torch.Tensor, bits: int, positions: np.ndarray | None) -> Codes:
        weight, mask = weight.detach().cpu(), mask.cpu()
        bucket, sign, buckets = _hashes(mask, bits)
        values = _project(weight[mask], bucket, sign, buckets)
        return Codes(np.zeros(0, dtype=np.uint8), (values.numpy().astype("<f4").tobytes(),),
                     {"buckets": buckets, "seed": SEED})

    def table_sizes(self, entry: Mapping[str, Any], shape: tuple[int, ...], bits: int) -> list[int]:
        buckets, kept, seed = int(entry["buckets"]), int(entry["kept"]), entry["seed"]
        if buckets != bucket_count(kept, bits):
            raise ValueError(f"{buckets} buckets for {kept} weights at {bits} bits")
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"bad hash seed {seed!r}")
        return [4 * buckets]

    def decode(self, codes: Codes, mask: torch.Tensor, bits: int) -> torch.Tensor:
        values = torch.from_numpy(np.frombuffer(codes.tables[0], dtype="<f4").astype(np.float32))
        bucket, sign, _ = _hashes(mask, bits, int(codes.fields["seed"]))
        return _expand(values, bucket, sign, mask)

    def table_bytes_upper(self, kept: int, bits: int, channels: int) -> int:
        return 4 * bucket_count(kept, bits)

    def bytes_upper(self, numel: int, kept: int, bits: int, channels: int) -> int:
        return self.table_bytes_upper(kept, bits, channels)
