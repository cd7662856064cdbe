"""Tests for canonical Huffman coding of small-alphabet symbol streams."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    encoded_bits,
    huffman_size,
    size_lower_bound,
    symbol_counts,
    table_bytes,
    table_from_bytes,
    table_size,
)


def _stream(rng: np.random.Generator, alphabet: int, size: int, kind: str) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(0, alphabet, size)
    if kind == "geometric":
        return np.minimum(rng.geometric(0.35, size) - 1, alphabet - 1)
    probs = rng.dirichlet(np.full(alphabet, 0.2))  # few dominant symbols, many rare or absent
    return rng.choice(alphabet, size=size, p=probs)


def _fibonacci(n: int) -> np.ndarray:
    fib = [1, 1]
    while len(fib) < n:
        fib.append(fib[-1] + fib[-2])
    return np.array(fib[:n], dtype=np.int64)


def _check_all(symbols: np.ndarray, alphabet: int, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Round trip through table and payload; every size function equals the real byte count."""
    counts = symbol_counts(symbols, alphabet)
    lengths = code_lengths(counts, max_length)
    assert lengths.dtype == np.uint8 and lengths.shape == (alphabet,)
    assert ((lengths > 0) == (counts > 0)).all()
    payload = encode(symbols, lengths)
    table = table_bytes(lengths)
    assert len(payload) == math.ceil(encoded_bits(counts, lengths) / 8)
    assert table_size(lengths) == len(table)
    assert huffman_size(symbols, alphabet, max_length) == len(table) + len(payload)
    restored_lengths = table_from_bytes(table + payload, alphabet)  # trailing bytes are ignored
    assert np.array_equal(restored_lengths, lengths)
    decoded = decode(payload, restored_lengths, symbols.size)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, symbols)
    return lengths


@pytest.mark.parametrize("alphabet", [2, 3, 5, 16, 17, 32, 100, 256])
@pytest.mark.parametrize("kind", ["uniform", "geometric", "dirichlet"])
def test_round_trip_and_exact_sizes(alphabet: int, kind: str) -> None:
    rng = np.random.default_rng(alphabet * 7 + len(kind))
    for size in (1, 7, 8, 9, 1000, 20_000):
        _check_all(_stream(rng, alphabet, size, kind), alphabet)


@given(
    symbols=st.lists(st.integers(0, 255), max_size=300),
    extra=st.integers(0, 40),
    max_length=st.integers(8, MAX_CODE_LENGTH),
)
@settings(max_examples=200, deadline=None)
def test_round_trip_property(symbols: list[int], extra: int, max_length: int) -> None:
    alphabet = min(256, max(symbols, default=0) + 1 + extra)
    _check_all(np.array(symbols, dtype=np.int64), alphabet, max_length)


def test_single_symbol_stream() -> None:
    symbols = np.full(21, 7)
    lengths = _check_all(symbols, 10)
    assert lengths[7] == 1 and np.count_nonzero(lengths) == 1
    assert len(encode(symbols, lengths)) == 3


def test_empty_stream() -> None:
    symbols = np.zeros(0, dtype=np.int64)
    lengths = _check_all(symbols, 12)
    assert not lengths.any()
    assert encode(symbols, lengths) == b""
    assert huffman_size(symbols, 12) == table_size(lengths) == 1


@pytest.mark.parametrize("alphabet", [2, 3, 4, 7, 16, 32, 200, 256])
def test_never_worse_than_fixed_length_plus_table(alphabet: int) -> None:
    rng = np.random.default_rng(alphabet)
    fixed_bits = max(1, math.ceil(math.log2(alphabet)))
    for kind in ("uniform", "geometric", "dirichlet"):
        symbols = _stream(rng, alphabet, 5000, kind)
        counts = symbol_counts(symbols, alphabet)
        lengths = code_lengths(counts)
        assert encoded_bits(counts, lengths) <= symbols.size * fixed_bits
        assert huffman_size(symbols, alphabet) <= math.ceil(symbols.size * fixed_bits / 8) + table_size(lengths)
    uniform = np.tile(np.arange(alphabet), 50)  # a flat power-of-two histogram gains nothing
    if alphabet & (alphabet - 1) == 0:
        counts = symbol_counts(uniform, alphabet)
        assert encoded_bits(counts, code_lengths(counts)) == uniform.size * fixed_bits


def _assert_prefix_free_and_canonical(lengths: np.ndarray) -> None:
    codes = canonical_codes(lengths)
    assert codes.dtype == np.uint32
    used = np.flatnonzero(lengths)
    longest = int(lengths.max())
    order = sorted(used, key=lambda s: (lengths[s], s))
    intervals = [(int(codes[s]) << (longest - int(lengths[s])), 1 << (longest - int(lengths[s]))) for s in order]
    position = 0
    for start, span in intervals:  # canonical: consecutive, non-overlapping left-aligned intervals from 0
        assert start == position
        position += span
    assert all(int(codes[s]) < 1 << int(lengths[s]) for s in used)


@pytest.mark.parametrize("seed", range(8))
def test_kraft_equality_and_canonical_codes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(2, 257))
    counts = rng.integers(0, 1000, alphabet) * (rng.random(alphabet) < 0.7)
    counts[:2] += 1
    lengths = code_lengths(counts)
    used = lengths[lengths > 0].astype(np.int64)
    longest = int(used.max())
    assert np.sum(1 << (longest - used)) == 1 << longest  # sum 2**-l == 1 exactly
    _assert_prefix_free_and_canonical(lengths)


@pytest.mark.parametrize("max_length", [5, 8, 12, 16, 17, 20, 24])
def test_max_length_on_fibonacci_counts(max_length: int) -> None:
    counts = _fibonacci(26)  # unrestricted Huffman needs 25 bits for the rarest symbols
    unrestricted_depth = len(counts) - 1
    lengths = code_lengths(counts, max_length)
    assert int(lengths.max()) == min(max_length, unrestricted_depth)
    _assert_prefix_free_and_canonical(lengths)
    used = lengths.astype(np.int64)
    assert np.sum(1 << (max_length - used)) <= 1 << max_length
    rng = np.random.default_rng(max_length)
    symbols = rng.permutation(np.repeat(np.arange(counts.size), np.minimum(counts, 3000)))
    _check_all(symbols, counts.size, max_length)


def _brute_force_cost(counts: list[int], max_length: int) -> int:
    best = None
    for combo in itertools.product(range(1, max_length + 1), repeat=len(counts)):
        if sum(2.0**-n for n in combo) <= 1.0:
            cost = sum(c * n for c, n in zip(counts, combo, strict=True))
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@given(counts=st.lists(st.integers(1, 1000), min_size=2, max_size=5), max_length=st.integers(1, 5))
@settings(max_examples=120, deadline=None)
def test_lengths_are_optimal_against_brute_force(counts: list[int], max_length: int) -> None:
    if len(counts) > 1 << max_length:
        with pytest.raises(ValueError):
            code_lengths(np.array(counts), max_length)
        return
    lengths = code_lengths(np.array(counts), max_length)
    assert int(lengths.max()) <= max_length
    assert encoded_bits(np.array(counts), lengths) == _brute_force_cost(counts, max_length)


def test_decode_rejects_corrupt_and_truncated_streams() -> None:
    rng = np.random.default_rng(3)
    symbols = _stream(rng, 16, 500, "geometric")
    lengths = code_lengths(symbol_counts(symbols, 16))
    payload = encode(symbols, lengths)
    with pytest.raises(ValueError):
        decode(payload[:-3], lengths, symbols.size)
    single = code_lengths(np.array([0, 5, 0]))  # one code "0": a 1 bit is no code
    assert np.array_equal(decode(b"\x00", single, 8), np.ones(8, dtype=np.uint8))
    with pytest.raises(ValueError):
        decode(b"\x10", single, 8)
    with pytest.raises(ValueError):
        decode(b"", lengths, 1)


def test_bad_inputs_are_rejected() -> None:
    lengths = code_lengths(np.array([3, 0, 1]))
    with pytest.raises(ValueError):
        encode(np.array([1]), lengths)  # symbol without a code
    with pytest.raises(ValueError):
        encode(np.array([3]), lengths)  # outside the alphabet
    with pytest.raises(ValueError):
        canonical_codes(np.array([1, 1, 1]))  # Kraft sum > 1
    with pytest.raises(ValueError):
        code_lengths(np.ones(257))
    table = table_bytes(code_lengths(np.arange(1, 41)))
    with pytest.raises(ValueError):
        table_from_bytes(table[:-1], 40)  # truncated
    with pytest.raises(ValueError):
        table_from_bytes(table, 39)  # does not fit the alphabet
    with pytest.raises(ValueError):
        table_from_bytes(b"\x07\x00\xff", 40)  # width beyond the longest code


@given(counts=st.lists(st.integers(0, 10**6), min_size=1, max_size=256).filter(lambda c: sum(c) > 0))
@settings(max_examples=300, deadline=None)
def test_the_entropy_bound_never_exceeds_the_real_size(counts: list[int]) -> None:
    """The packer skips building a code when this bound already loses, so it must never overstate the size."""
    array = np.array(counts, dtype=np.int64)
    lengths = code_lengths(array)
    real = table_size(lengths) + -(-encoded_bits(array, lengths) // 8)
    assert size_lower_bound(array) <= real


def test_the_entropy_bound_rules_out_huffman_on_uniform_codes() -> None:
    """Uniform 8-bit codes (a dense layer at 8 bits): the bound alone shows fixed width is smaller."""
    counts = np.full(256, 1000)
    assert size_lower_bound(counts) >= 256 * 1000  # so encode_symbols keeps fixed width without a code
    lengths = code_lengths(counts)
    assert table_size(lengths) + encoded_bits(counts, lengths) // 8 > 256 * 1000
