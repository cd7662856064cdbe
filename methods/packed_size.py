"""Upper bounds of packed bytes (``methods/packing.py``) from a layer's counts alone, without packing it.

A layer's payload is its sparse index plus, for fp32, 4 bytes per kept weight or, for codes, its
quantizer's tables and codes (:meth:`methods.quantizers.Quantizer.bytes_upper`). The bounds hold for
every mask and every weight value with those counts (checked against real files in
``tests/test_packed_size.py`` and, per quantizer, ``tests/test_quantizer_conformance.py``). Where a layer's
weights are at hand, :class:`Payload` measures its payload exactly, as the packer stores it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.policy import LayerChoice
from methods.packing import MAX_RELATIVE_K, MIN_RELATIVE_K, WeightEncoding, index_bytes, weight_payload_bytes
from methods.pruning import magnitude_mask, pruned_count
from methods.quantization import FP32_BITS
from methods.quantizers import QUANTIZERS, stored_weight
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


class Payload:
    """Payload bytes of a layer's weights at their original shapes, measured as the packer stores them (memoized).

    With ``exact_codes`` the weights are encoded exactly as the pipeline encodes them, so the bytes are
    exact. A per-candidate fine-tune changes the codes but not the masks: then only the indexes are
    measured and the codes count at their bound (``methods/packed_size.py``).
    """

    def __init__(self, weights: Sequence[Sequence[torch.Tensor]], exact_codes: bool = True):
        """Args: weights: each layer's compressible weight tensors (episode order); exact_codes: see the class."""
        self._weights = [tuple(layer) for layer in weights]
        self._exact = exact_codes
        self._memo: dict[tuple, int] = {}

    def __call__(self, index: int, choice: LayerChoice) -> int:
        return sum(self._tensor(index, part, weight, choice) for part, weight in enumerate(self._weights[index]))

    def _tensor(self, index: int, part: int, weight: torch.Tensor, choice: LayerChoice) -> int:
        key = (index, part, choice) if self._exact else (index, part, choice.sparsity)
        if key not in self._memo:
            mask = magnitude_mask(weight, choice.sparsity)
            if self._exact:
                stored = stored_weight(weight, mask, choice.bits, choice.quantizer)
                self._memo[key] = weight_payload_bytes(stored, WeightEncoding(mask, choice.bits, choice.quantizer))
            else:
                self._memo[key] = index_bytes(mask)
        if self._exact:
            return self._memo[key]
        kept = weight.numel() - pruned_count(weight.numel(), choice.sparsity)
        return weight_bytes_upper(weight.numel(), weight.shape[0], kept, choice.bits, self._memo[key],
                                  choice.quantizer)
