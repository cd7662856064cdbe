"""Canonical Huffman coding of small-alphabet integer streams (Deep Compression's last stage).

Symbols are ints in ``[0, alphabet)`` with ``alphabet <= 256`` (weight codes or relative-index
gap symbols). Codes are canonical: symbols with a code are ordered by ``(length, symbol)`` and
numbered consecutively, so the code-length table alone defines the code.

Table layout (:func:`table_bytes`): one byte ``width`` (bits per stored length, 0 if no symbol
has a code, then the table ends), one byte ``m - 1`` (``m`` = last coded symbol + 1), then the
lengths of symbols ``0..m-1`` bit-packed MSB-first at ``width`` bits each.
The payload (:func:`encode`) is the concatenated codes, MSB-first, zero-padded to a whole byte.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

MAX_ALPHABET = 256
MAX_CODE_LENGTH = 24
"""Longest code: the decoder peeks at codes through 32-bit windows at a bit offset 0-7."""

_LOOKUP_BITS = 16  # decode through a direct lookup table up to this code length, binary search above
_CHAIN_STRIDE = 4  # power of two: the decoder's Python loop visits every _CHAIN_STRIDE-th code


def symbol_counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Occurrences of every symbol ``0..alphabet-1`` (int64)."""
    return np.bincount(_check_symbols(symbols, alphabet), minlength=alphabet).astype(np.int64)


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths (uint8) for the symbol counts, at most ``max_length`` bits.

    Absent symbols get 0; a single present symbol gets 1. Plain Huffman is used when it
    fits, package-merge (optimal under the limit) otherwise. Raises ValueError on bad counts
    or if ``max_length`` bits cannot code all present symbols.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or not 1 <= counts.size <= MAX_ALPHABET or (counts < 0).any():
        raise ValueError(f"counts must be 1-{MAX_ALPHABET} non-negative numbers")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in 1-{MAX_CODE_LENGTH}, got {max_length}")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts)
    if present.size <= 1:
        lengths[present] = 1
        return lengths
    if present.size > 1 << max_length:
        raise ValueError(f"{present.size} symbols do not fit in codes of at most {max_length} bits")
    weights = [int(c) for c in counts[present]]
    depths = _huffman_depths(weights)
    if max(depths) > max_length:
        depths = _package_merge(weights, max_length)
    lengths[present] = depths
    return lengths


def size_lower_bound(counts: np.ndarray) -> int:
    """A lower bound of ``huffman_size`` for these symbol counts, from their entropy (no code is built).

    No prefix code spends fewer bits than the counts' entropy, and the table takes at least one byte;
    the bound is rounded down so that float error cannot lift it above the real size.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    present = counts[counts > 0]
    if present.size <= 1:
        return 1 + int(total) // 8
    entropy_bits = float(-(present * np.log2(present / total)).sum())
    return 1 + int(entropy_bits * (1 - 1e-9)) // 8


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code (uint32, right-aligned) per symbol, 0 where the length is 0; ValueError if Kraft sum > 1."""
    lengths = _check_lengths(lengths)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    order, starts, longest = _left_aligned(lengths)
    if order.size:
        codes[order] = (starts >> (longest - lengths[order].astype(np.int64))).astype(np.uint32)
    return codes


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Payload bits ``sum(counts * lengths)`` of a stream with these symbol counts."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), _check_lengths(lengths).astype(np.int64)))


def table_size(lengths: np.ndarray) -> int:
    """``len(table_bytes(lengths))`` without serialising."""
    width, stored = _table_layout(_check_lengths(lengths))
    return 2 + -(-stored * width // 8) if width else 1


def table_bytes(lengths: np.ndarray) -> bytes:
    """Compact serialisation of the code-length table (layout in the module docstring)."""
    lengths = _check_lengths(lengths)
    width, stored = _table_layout(lengths)
    if not width:
        return b"\x00"
    bits = np.unpackbits(lengths[:stored, None], axis=1)[:, 8 - width :]
    return bytes([width, stored - 1]) + np.packbits(bits.reshape(-1)).tobytes()


def table_from_bytes(data: bytes | memoryview, alphabet: int) -> np.ndarray:
    """Inverse of :func:`table_bytes`: the uint8 lengths of ``alphabet`` symbols.

    Reads the table from the start of ``data``; trailing bytes are ignored (the table
    occupies ``table_size(result)`` bytes).

    Raises:
        ValueError: If the table is truncated, not as :func:`table_bytes` writes it, does not
            fit ``alphabet`` or is not a prefix code.
    """
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet must be in 1-{MAX_ALPHABET}, got {alphabet}")
    raw = np.frombuffer(data, dtype=np.uint8)
    lengths = np.zeros(alphabet, dtype=np.uint8)
    if raw.size and raw[0] == 0:
        return lengths
    width, stored = (int(raw[0]), int(raw[1]) + 1) if raw.size >= 2 else (0, 0)
    size = 2 + -(-stored * width // 8)
    if not 1 <= width <= MAX_CODE_LENGTH.bit_length() or stored > alphabet or raw.size < size:
        raise ValueError("corrupt or truncated Huffman table")
    padded = np.zeros((stored, 8), dtype=np.uint8)
    padded[:, 8 - width :] = np.unpackbits(raw[2:size])[: stored * width].reshape(stored, width)
    lengths[:stored] = np.packbits(padded, axis=1).reshape(-1)
    if lengths.max() > MAX_CODE_LENGTH or _table_layout(lengths) != (width, stored):
        raise ValueError("corrupt Huffman table")
    _left_aligned(lengths)
    return lengths


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """The codes of ``symbols`` concatenated MSB-first, zero-padded to a whole byte.

    Raises ValueError if a symbol is out of range or has no code (length 0).
    """
    lengths = _check_lengths(lengths)
    symbols = _check_symbols(symbols, lengths.size)
    if symbols.size == 0:
        return b""
    sym_len = lengths.astype(np.int64)[symbols]
    if not sym_len.all():
        raise ValueError("a symbol of the stream has no code (length 0)")
    ends = np.cumsum(sym_len)
    starts = ends - sym_len
    total = int(ends[-1])
    # Codes never overlap, so OR-ing them into 32-bit words is a sum: place each code in the
    # 64-bit window of its word and the next one, and accumulate both halves with bincount.
    window = canonical_codes(lengths).astype(np.uint64)[symbols]
    window <<= (64 - (starts & 31) - sym_len).astype(np.uint64)
    word = starts >> 5
    size = int(word[-1]) + 2
    hi = np.bincount(word, weights=(window >> np.uint64(32)).astype(np.float64), minlength=size)
    lo = np.bincount(word + 1, weights=(window & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=size)
    return (hi + lo).astype(">u4").tobytes()[: -(-total // 8)]


def decode(data: bytes | memoryview, lengths: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: the first ``count`` symbols (uint8) of the stream.

    Every bit position is decoded speculatively (the length of the code starting there,
    by table lookup), then the chain of code starts from bit 0 is followed. Raises ValueError
    if the stream is truncated or holds a bit pattern that is no code.
    """
    lengths = _check_lengths(lengths)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return np.zeros(0, dtype=np.uint8)
    order, starts, longest = _left_aligned(lengths)
    if order.size == 0:
        raise ValueError("no symbol has a code")
    raw = np.frombuffer(data, dtype=np.uint8)
    avail = raw.size * 8
    nbits = min(avail, count * longest)
    used = -(-nbits // 8)
    peek = _peek(raw[:used], nbits, longest)
    sorted_lengths = lengths[order]
    step = _lookup(peek, np.append(sorted_lengths, np.uint8(0)), sorted_lengths, starts, longest)
    jump = np.arange(nbits + 1, dtype=np.int32 if nbits < 2**31 - 64 else np.int64)
    jump[:nbits] += step
    invalid = np.append((step == 0) | (jump[:nbits] > avail), True)
    jump[invalid | (jump > nbits)] = nbits
    positions = _chain(jump, count)
    if invalid[positions].any():
        raise ValueError("corrupt or truncated Huffman stream")
    ranks = np.arange(order.size + 1, dtype=np.int16)
    return order[_lookup(peek[positions], ranks, sorted_lengths, starts, longest)].astype(np.uint8)


def huffman_size(symbols: np.ndarray, alphabet: int, max_length: int = MAX_CODE_LENGTH) -> int:
    """Exact bytes of table plus payload for ``symbols``, without encoding them."""
    counts = symbol_counts(symbols, alphabet)
    lengths = code_lengths(counts, max_length)
    return table_size(lengths) + -(-encoded_bits(counts, lengths) // 8)


def _huffman_depths(weights: list[int]) -> list[int]:
    """Unrestricted Huffman code lengths for >= 2 positive weights."""
    depths = [0] * len(weights)
    heap = [(w, [i]) for i, w in enumerate(weights)]  # ties compare the distinct member lists
    heapq.heapify(heap)
    while len(heap) > 1:
        (w1, first), (w2, second) = heapq.heappop(heap), heapq.heappop(heap)
        for symbol in itertools.chain(first, second):
            depths[symbol] += 1
        heapq.heappush(heap, (w1 + w2, first + second))
    return depths


def _package_merge(weights: list[int], max_length: int) -> list[int]:
    """Optimal code lengths of at most ``max_length`` bits (package-merge / coin collector)."""
    order = sorted(range(len(weights)), key=weights.__getitem__)
    leaves = [(weights[i], (i,)) for i in order]
    current = leaves
    for _ in range(max_length - 1):
        packages = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(current[0::2], current[1::2], strict=False)]
        current = list(heapq.merge(leaves, packages, key=lambda item: item[0]))
    depths = [0] * len(weights)
    for _, members in current[: 2 * len(weights) - 2]:
        for symbol in members:
            depths[symbol] += 1
    return depths


def _table_layout(lengths: np.ndarray) -> tuple[int, int]:
    """Bits per stored length and number of stored lengths; (0, 0) if no symbol has a code."""
    used = np.flatnonzero(lengths)
    return (int(lengths.max()).bit_length(), int(used[-1]) + 1) if used.size else (0, 0)


def _left_aligned(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Coded symbols in canonical order, their codes left-aligned to the longest length, and it.

    Raises ValueError if the code is over-subscribed (Kraft sum > 1).
    """
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    if order.size == 0:
        return order, np.zeros(0, dtype=np.int64), 0
    longest = int(lengths.max())
    spans = np.left_shift(np.int64(1), longest - lengths[order].astype(np.int64))
    ends = np.cumsum(spans)
    if ends[-1] > 1 << longest:
        raise ValueError("code lengths are over-subscribed (Kraft sum > 1)")
    return order, ends - spans, longest


def _peek(raw: np.ndarray, nbits: int, longest: int) -> np.ndarray:
    """The ``longest`` bits starting at every bit position ``0..nbits-1`` of ``raw`` (zero-padded)."""
    padded = np.zeros(raw.size + 3, dtype=np.uint32)
    padded[: raw.size] = raw
    window = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]
    return ((window[:, None] << np.arange(8, dtype=np.uint32)) >> np.uint32(32 - longest)).reshape(-1)[:nbits]


def _lookup(
    peek: np.ndarray, per_rank: np.ndarray, sorted_lengths: np.ndarray, starts: np.ndarray, longest: int
) -> np.ndarray:
    """``per_rank[r]`` for the canonical rank ``r`` of the code at the head of each peek.

    ``per_rank`` has one extra last entry, returned where no code matches.
    """
    spans = np.left_shift(np.int64(1), longest - sorted_lengths.astype(np.int64))
    if longest > _LOOKUP_BITS:
        return per_rank[np.searchsorted(starts + spans, peek, side="right")]
    table = np.full(1 << longest, per_rank[-1], dtype=per_rank.dtype)
    covered = int(starts[-1] + spans[-1])
    table[:covered] = np.repeat(per_rank[:-1], spans)
    return table[peek]


def _chain(jump: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` nodes of the path ``0, jump[0], jump[jump[0]], ...``.

    Walks every ``_CHAIN_STRIDE``-th node in Python, then fills the rest by vectorised gathers.
    """
    strided = jump
    for _ in range(_CHAIN_STRIDE.bit_length() - 1):
        strided = strided[strided]
    view = memoryview(strided)
    heads, node = [], 0
    for _ in range(-(-count // _CHAIN_STRIDE)):
        heads.append(node)
        node = view[node]
    block = np.empty((_CHAIN_STRIDE, len(heads)), dtype=jump.dtype)
    block[0] = heads
    for row in range(1, _CHAIN_STRIDE):
        block[row] = jump[block[row - 1]]
    return block.T.reshape(-1)[:count]


def _check_lengths(lengths: np.ndarray) -> np.ndarray:
    """The lengths as a uint8 array of 1-256 entries, each <= MAX_CODE_LENGTH."""
    lengths = np.asarray(lengths)
    if (
        lengths.ndim != 1
        or not 1 <= lengths.size <= MAX_ALPHABET
        or not 0 <= lengths.min() <= lengths.max() <= MAX_CODE_LENGTH
    ):
        raise ValueError(f"lengths must be 1-{MAX_ALPHABET} code lengths in 0-{MAX_CODE_LENGTH}")
    return lengths.astype(np.uint8)


def _check_symbols(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """The symbols as a flat int64 array, all in ``[0, alphabet)``."""
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet must be in 1-{MAX_ALPHABET}, got {alphabet}")
    symbols = np.asarray(symbols).reshape(-1)
    integral = symbols.size == 0 or np.issubdtype(symbols.dtype, np.integer)
    if not integral or (symbols.size and not 0 <= symbols.min() <= symbols.max() < alphabet):
        raise ValueError(f"symbols must be integers in [0, {alphabet})")
    return symbols.astype(np.int64, copy=False)
