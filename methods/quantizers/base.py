"""The quantizer extension point: what every weight quantizer provides, and the registry that holds them.

A quantizer turns a layer's kept weights (mask True) into ``bits``-bit codes (1-8) and back. It provides

* :meth:`Quantizer.quantize_dequantize`: ``(weight, mask, bits) -> stored weight``, the float32 weight as the
  packed file reproduces it (kept weights on the codes' values, pruned positions ``+0.0``);
* :meth:`Quantizer.parametrization`: a ``torch.nn.utils.parametrize`` module whose output is the stored
  weight, for quantization-aware fine-tuning (straight-through or shared-value training);
* :meth:`Quantizer.encode` / :meth:`Quantizer.decode`: its codes and side tables in the packed file
  (``methods/packing.py``; the registered name is the table entry's ``encoding``);
* :meth:`Quantizer.bytes_upper`: an upper bound of those bytes for a layer (``methods/packed_size.py``).

fp32 (``bits == 32``) is not a quantizer: :func:`stored_weight` and :func:`parametrization` mask the weight
for every quantizer name. ``tests/test_quantizer_conformance.py`` checks every registered quantizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.policy import FP32_BITS, Policy
from core.registry import Registry, UnknownEntryError
from core.space import SpaceSettings
from methods.quantization import fake_quantize, quantize_dequantize
from methods.symbol_coding import packed_len


@dataclass(frozen=True, eq=False)
class Codes:
    """What a quantizer stores for one weight tensor, besides the sparse index."""

    symbols: np.ndarray
    """uint8 code of each kept weight (< ``2**bits``), in row-major order of the kept positions; the packer
    stores them fixed-width or Huffman-coded, after the tables."""
    tables: tuple[bytes | memoryview, ...] = ()
    """Side data (scales, codebook), each stored as one segment, in this order, before the codes."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """JSON fields of the tensor's table entry: written, the quantizer's extra ones (e.g. a codebook's
    length); read back, the whole entry."""


class Quantizer(ABC):
    """A way of coding a layer's kept weights in 1-8 bits (see the module docstring)."""

    per_channel: bool = False
    """True when each output channel (dim 0) has its own ``2**bits`` values; else the whole tensor shares them."""
    stores_codes: bool = True
    """True when the file holds one ``bits``-bit code per kept weight; False when the tables alone determine the
    weight (the codes segment is then empty)."""

    def max_distinct(self, kept: int, bits: int) -> int:
        """Most distinct kept values in one sharing group (a channel, or the tensor) of ``kept`` weights."""
        return 2**bits

    @abstractmethod
    def quantize_dequantize(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
        """The stored float32 weight (no gradient): kept weights on their codes' values, pruned ones ``+0.0``.

        Bit-identical to ``decode(encode(weight, mask, bits))``; the result is in :meth:`contains`.
        """

    @abstractmethod
    def parametrization(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> nn.Module:
        """A parametrize module whose output is a stored weight (on valid codes, zeros where masked).

        Args:
            weight: the layer's weight, already stored (as :meth:`quantize_dequantize` returned it).
            mask: bool keep-mask of the weight's shape.
            bits: code width 1-8.
        """

    @abstractmethod
    def on_codes(self, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
        """True when the kept values of ``stored`` are values this quantizer's ``bits``-bit codes can take
        (e.g. on a per-channel linear grid, or in a codebook of at most ``2**bits`` values)."""

    def contains(self, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
        """True when ``stored`` is a weight this quantizer can store: ``+0.0`` where masked, kept values on codes.

        Like a gymnasium space's ``contains``: the conformance suite checks that every stored and every
        fine-tuned weight is in it.
        """
        pruned = stored.detach()[~mask]
        if not bool(torch.all(pruned == 0)) or bool(torch.signbit(pruned).any()):
            return False
        return self.on_codes(stored, mask, bits)

    @abstractmethod
    def encode(self, weight: torch.Tensor, mask: torch.Tensor, bits: int, positions: np.ndarray | None) -> Codes:
        """Codes and tables of ``weight``'s kept values.

        Args:
            weight: float weight on CPU.
            mask: bool keep-mask of the weight's shape.
            bits: code width 1-8.
            positions: ``np.flatnonzero(mask)``, or ``None`` when nothing is pruned.
        """

    @abstractmethod
    def table_sizes(self, entry: Mapping[str, Any], shape: tuple[int, ...], bits: int) -> list[int]:
        """Byte length of each table segment a file entry must have.

        Raises:
            ValueError: when the entry's fields are inconsistent.
        """

    @abstractmethod
    def decode(self, codes: Codes, mask: torch.Tensor, bits: int) -> torch.Tensor:
        """The stored float32 weight from codes read back from a file (table sizes already checked).

        Raises:
            ValueError: when the codes do not fit the tables.
        """

    @abstractmethod
    def table_bytes_upper(self, kept: int, bits: int, channels: int) -> int:
        """Upper bound of the table bytes of a layer with ``kept`` weights and ``channels`` output channels."""

    def bytes_upper(self, numel: int, kept: int, bits: int, channels: int) -> int:
        """Upper bound of this quantizer's bytes for a layer: tables plus fixed-width codes (no index).

        Codes count fixed-width: the packer stores them Huffman-coded only when that is smaller.
        ``numel`` (all weights, pruned ones included) is there for quantizers whose tables depend on it.
        """
        return self.table_bytes_upper(kept, bits, channels) + packed_len(kept, bits)


QUANTIZERS: Registry[Quantizer] = Registry("quantizer")
"""Quantizers by policy name (``LayerChoice.quantizer``), which is also their packed-file ``encoding``."""


def stored_weight(weight: torch.Tensor, mask: torch.Tensor, bits: int, quantizer: str) -> torch.Tensor:
    """The weight as the packed file stores it: ``quantizer``'s codes, or the masked fp32 weight at 32 bits."""
    if bits == FP32_BITS:
        return quantize_dequantize(weight, mask, FP32_BITS)
    return QUANTIZERS[quantizer].quantize_dequantize(weight, mask, bits)


class MaskedWeight(nn.Module):
    """Parametrization of an fp32 weight: pruned positions stay ``+0.0`` and get no gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.mask, FP32_BITS)


def parametrization(weight: torch.Tensor, mask: torch.Tensor, bits: int, quantizer: str) -> nn.Module:
    """The fine-tune parametrization of a stored weight: ``quantizer``'s, or masking at 32 bits."""
    if bits == FP32_BITS:
        return MaskedWeight(mask)
    return QUANTIZERS[quantizer].parametrization(weight, mask, bits)


def check_quantizer_names(source: SpaceSettings | Policy) -> None:
    """Raises one clear error when a space's or a policy's quantizer names are not all registered.

    Raises:
        UnknownEntryError: (a ``ValueError``) naming every unknown quantizer, where it is used, and the choices.
    """
    if isinstance(source, SpaceSettings):
        used = {name: ["the search space"] for name in source.quantizers}
    else:
        used = {}
        for layer, choice in source:
            used.setdefault(choice.quantizer, []).append(f"layer {layer}")
    unknown = {name: places for name, places in used.items() if name not in QUANTIZERS}
    if unknown:
        listed = "; ".join(f"{name!r} ({', '.join(places)})" for name, places in unknown.items())
        raise UnknownEntryError(f"unknown quantizer {listed}; registered quantizers: {', '.join(QUANTIZERS)}")
