"""Fixed-width bit packing and Huffman coding of small-alphabet symbol streams.

A stream of ``bits``-bit symbols (weight codes, relative-index gaps) is stored in one byte-aligned
segment, either ``fixed`` (MSB-first, ``bits`` bits per symbol) or ``huffman`` (the canonical code
length table followed by the code stream), whichever is smaller.
"""

from __future__ import annotations

import numpy as np

from methods import huffman

FIXED = "fixed"
HUFFMAN = "huffman"
CODINGS = (FIXED, HUFFMAN)


class StreamError(ValueError):
    """A stored symbol stream does not decode."""


def encode_symbols(symbols: np.ndarray, bits: int, allow_huffman: bool = True) -> tuple[str, bytes]:
    """The smaller of the fixed-width and the Huffman-coded segment for ``symbols`` (< 2**bits)."""
    if not allow_huffman or symbols.size == 0:
        return FIXED, pack_bits(symbols, bits)
    fixed = packed_len(symbols.size, bits)
    counts = huffman.symbol_counts(symbols, 2**bits)
    if huffman.size_lower_bound(counts) >= fixed:  # Huffman cannot be smaller: no code is built
        return FIXED, pack_bits(symbols, bits)
    lengths = huffman.code_lengths(counts)
    size = huffman.table_size(lengths) + -(-huffman.encoded_bits(counts, lengths) // 8)
    if size >= fixed:
        return FIXED, pack_bits(symbols, bits)
    return HUFFMAN, huffman.table_bytes(lengths) + huffman.encode(symbols, lengths)


def decode_symbols(coding: str, data: memoryview | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: the ``count`` symbols as uint8.

    Raises:
        StreamError: on an unknown coding or a segment that does not decode to ``count`` symbols.
    """
    if coding == FIXED:
        if len(data) != packed_len(count, bits):
            raise StreamError("fixed-width stream has the wrong length")
        return unpack_bits(data, bits, count)
    if coding != HUFFMAN:
        raise StreamError(f"unknown stream coding {coding!r}")
    try:
        lengths = huffman.table_from_bytes(data, 2**bits)
        table = huffman.table_size(lengths)
        return huffman.decode(memoryview(data)[table:], lengths, count)
    except ValueError as exc:
        raise StreamError(f"bad Huffman stream: {exc}") from exc


def packed_len(count: int, bits: int) -> int:
    """Bytes holding ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack uint8 values < 2**bits into an MSB-first bit stream (like ``np.packbits``)."""
    values = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return values.tobytes()
    if bits == 1:
        return np.packbits(values).tobytes()
    count = values.size
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint8)
    padded[:count] = values
    # Eight values per big-endian u64 word, one per byte; squeeze them together
    # (SWAR): 8-bit lanes -> 16 -> 32 -> 64, dropping the unused high bits.
    word = padded.view(">u8").astype(np.uint64)
    for lane, width in ((16, bits), (32, 2 * bits), (64, 4 * bits)):
        low = _lane_mask(lane // 2, lane)
        high = word & ~low
        high >>= np.uint64(lane // 2 - width)
        word &= low
        word |= high
    data = word.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - bits :]
    return data.tobytes()[: packed_len(count, bits)]


def unpack_bits(data: memoryview | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: the first ``count`` values as uint8."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < packed_len(count, bits):
        raise StreamError("truncated bit stream")
    if bits == 8:
        return raw[:count].copy()
    if bits == 1:
        return np.unpackbits(raw, count=count)
    groups = -(-count // 8)
    padded = np.zeros(groups * bits, dtype=np.uint8)
    used = min(raw.size, padded.size)
    padded[:used] = raw[:used]
    buffer = np.zeros((groups, 8), dtype=np.uint8)
    buffer[:, 8 - bits :] = padded.reshape(groups, bits)
    word = buffer.view(">u8").reshape(groups).astype(np.uint64)
    for lane, width in ((64, 4 * bits), (32, 2 * bits), (16, bits)):
        high = word << np.uint64(lane // 2 - width)
        high &= ~_lane_mask(lane // 2, lane)
        word &= _lane_mask(width, lane)
        word |= high
    return word.astype(">u8").view(np.uint8)[:count]


def _lane_mask(width: int, lane: int) -> np.uint64:
    """u64 with the low ``width`` bits of every ``lane``-bit lane set."""
    unit = (1 << width) - 1
    return np.uint64(sum(unit << shift for shift in range(0, 64, lane)))
