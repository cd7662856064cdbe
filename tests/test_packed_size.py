"""Packed-size bounds and exact measurements (methods/packed_size.py, methods/packing.py) against real packed bytes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.packed_size import index_bytes_upper, weight_bytes_upper
from methods.packing import PREFIX_BYTES, WeightEncoding, header_bytes, index_bytes, pack, weight_payload_bytes


def _payload(weight: torch.Tensor, mask: torch.Tensor, bits: int, quantizer: str = "linear") -> int:
    """Payload bytes of one encoded weight in a real packed file (file minus prefix and header)."""
    encoding = WeightEncoding(mask, bits, quantizer)
    blob = pack({"w": weight}, {"w": encoding}, {})
    real = len(blob) - PREFIX_BYTES - header_bytes(blob)
    assert real == weight_payload_bytes(weight, encoding)  # the exact measurement is the file's
    return real


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 60),
    density=st.floats(0.0, 1.0),
    clustered=st.booleans(),
    bits=st.sampled_from([1, 2, 3, 4, 8, 32]),
    seed=st.integers(0, 2**16),
)
def test_weight_bound_holds_on_real_bytes(rows: int, cols: int, density: float, clustered: bool, bits: int,
                                          seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    numel = rows * cols
    kept = max(1, int(round(density * numel)))
    if clustered:  # one long run of pruned weights: the worst case of the relative index
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[:kept] = True
    else:
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=generator)[:kept]] = True
    mask = flat.reshape(rows, cols)
    real = _payload(weight, mask, bits)
    assert real <= weight_bytes_upper(numel, rows, kept, bits)
    assert index_bytes_upper(numel, kept) <= (numel + 7) // 8
    assert index_bytes(mask) <= index_bytes_upper(numel, kept)
    assert real <= weight_bytes_upper(numel, rows, kept, bits, index=index_bytes(mask))


def test_relative_index_bound_is_tight_at_high_sparsity() -> None:
    """At 95% sparsity the bound is far below a bitmask and within 40% of the real index."""
    weight = torch.randn(300, 400, generator=torch.Generator().manual_seed(0))
    mask = weight.abs() > torch.quantile(weight.abs(), 0.95)
    kept = int(mask.sum())
    real_index = _payload(weight, mask, 32) - 4 * kept
    assert real_index == index_bytes(mask)
    bound = index_bytes_upper(weight.numel(), kept)
    assert real_index <= bound < 0.6 * (weight.numel() // 8)
    assert bound < 1.4 * real_index
