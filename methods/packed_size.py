"""Upper bounds of packed bytes (``methods/packing.py``) from a layer's counts alone, without packing it.

A layer's payload is its sparse index plus, for fp32, 4 bytes per kept weight or, for codes, its
quantizer's tables and codes (:meth:`methods.quantizers.Quantizer.bytes_upper`). The bounds hold for
every mask and every weight value with those counts (checked against real files in
``tests/test_packed_size.py`` and, per quantizer, ``tests/test_quantizer_conformance.py``).
"""

from __future__ import annotations

from methods.packing import MAX_RELATIVE_K, MIN_RELATIVE_K
from methods.quantization import FP32_BITS
from methods.quantizers import QUANTIZERS
from methods.symbol_coding import packed_len


def index_bytes_upper(numel: int, kept: int) -> int:
    """Upper bound of the sparse index bytes: min(bitmask, relative index with every gap worst-case)."""
    if kept >= numel:
        return 0
    bitmask = packed_len(numel, 1)
    best = bitmask
    if 2 * kept < 8 * bitmask:
        for k in range(MIN_RELATIVE_K, MAX_RELATIVE_K + 1):
            symbols = kept + (numel - kept) // (2**k - 1)  # sum(floor(gap / E)) <= floor(sum(gap) / E)
            best = min(best, packed_len(symbols, k))
    return best


def weight_bytes_upper(
    numel: int, channels: int, kept: int, bits: int, index: int | None = None, quantizer: str = "linear"
) -> int:
    """Upper bound of one encoded weight's payload.

    Args:
        numel: weight elements.
        channels: output channels (dim 0).
        kept: kept (unpruned) weights.
        bits: code width 1-8, or 32 for fp32 values.
        index: the exact index bytes when known (:func:`methods.packing.index_bytes`), else bounded.
        quantizer: the registered quantizer of the codes (unused for fp32).
    """
    index = index_bytes_upper(numel, kept) if index is None else index
    if bits == FP32_BITS:
        return index + 4 * kept
    return index + QUANTIZERS[quantizer].bytes_upper(numel=numel, kept=kept, bits=bits, channels=channels)
