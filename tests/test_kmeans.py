"""Tests for Deep Compression weight sharing (per-layer k-means codebooks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.kmeans import (
    SharedWeight,
    apply_centroid_update,
    centroid_gradients,
    kmeans_codebook,
    kmeans_dequantize,
    kmeans_quantize,
    kmeans_quantize_dequantize,
)
from methods.quantization import FP32_BITS, quantize_dequantize


def _case(shape: tuple[int, ...], seed: int, density: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * 0.1
    mask = torch.rand(shape, generator=generator) < density
    return weight, mask


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _bimodal(rng: np.random.Generator, size: int) -> np.ndarray:
    left = rng.normal(-0.8, 0.05, size * 3 // 4)
    right = rng.normal(0.5, 0.1, size - left.size)
    return rng.permutation(np.concatenate([left, right])).astype(np.float32)


@given(
    shape=st.sampled_from([(1,), (5,), (3, 1), (4, 7), (6, 3, 3, 3), (9, 40), (64, 64)]),
    seed=st.integers(0, 2**16),
    bits=st.integers(1, 8),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
@settings(max_examples=150, deadline=None)
def test_bit_exact_reconstruction_and_pruned_zero(shape: tuple[int, ...], seed: int, bits: int, density: float) -> None:
    weight, mask = _case(shape, seed, density)
    shared = kmeans_quantize(weight, mask, bits)
    kept = int(mask.sum())
    assert shared.codes.dtype == np.uint8 and shared.codes.shape == (kept,)
    assert shared.centroids.dtype == np.float32
    assert np.all(np.diff(shared.centroids) >= 0)
    assert shared.centroids.size <= 2**bits
    manual = torch.zeros(weight.numel(), dtype=torch.float32)
    manual[torch.from_numpy(np.flatnonzero(mask.numpy()))] = torch.from_numpy(shared.centroids[shared.codes])
    fast = kmeans_quantize_dequantize(weight, mask, bits)
    assert _bits_equal(fast, manual.reshape(shape))
    assert _bits_equal(fast, kmeans_dequantize(shared, mask))
    assert torch.all(fast[~mask].view(torch.int32) == 0)  # exactly +0.0
    assert torch.unique(fast[mask]).numel() <= 2**bits
    kept_values = weight[mask].numpy()
    if kept:  # every kept weight sits on its nearest centroid
        distance = np.abs(kept_values[:, None] - shared.centroids[None, :].astype(np.float64))
        chosen = np.abs(kept_values - shared.centroids[shared.codes].astype(np.float64))
        assert np.all(chosen <= distance.min(axis=1) + 1e-7)


def test_fp32_passthrough() -> None:
    weight, mask = _case((8, 5), 1, 0.5)
    out = kmeans_quantize_dequantize(weight, mask, FP32_BITS)
    assert torch.equal(out[mask], weight[mask])
    assert torch.all(out[~mask].view(torch.int32) == 0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kmeans_beats_linear_grid_on_bimodal(bits: int) -> None:
    values = _bimodal(np.random.default_rng(bits), 20_000)
    centroids, codes = kmeans_codebook(values, bits)
    kmeans_error = float(np.mean((centroids[codes] - values) ** 2))
    linear_init, linear_codes = kmeans_codebook(values, bits, iterations=0)
    grid_error = float(np.mean((linear_init[linear_codes] - values) ** 2))
    weight = torch.from_numpy(values).reshape(1, -1)  # one channel: the whole layer
    affine = quantize_dequantize(weight, torch.ones_like(weight, dtype=torch.bool), bits).numpy().reshape(-1)
    affine_error = float(np.mean((affine - values) ** 2))
    assert kmeans_error <= grid_error
    assert kmeans_error <= affine_error
    if bits >= 2:  # the modes get their own centroids: much better than the even grid
        assert kmeans_error < 0.5 * min(grid_error, affine_error)


def test_linear_initialisation_is_deterministic() -> None:
    values = np.random.default_rng(5).normal(size=3000).astype(np.float32)
    for bits in (1, 3, 5):
        init, _ = kmeans_codebook(values, bits, iterations=0)
        expected = np.linspace(float(values.min()), float(values.max()), 2**bits).astype(np.float32)
        assert np.array_equal(init, expected)
        first = kmeans_codebook(values, bits)
        again = kmeans_codebook(values.copy(), bits)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(kmeans_codebook(values, 3)[0], kmeans_codebook(values, 3, iterations=0)[0])


def test_empty_clusters_keep_their_centroid() -> None:
    values = np.array([0.0, 0.1, 0.2, 0.0, 9.8, 9.9, 10.0, 10.0], dtype=np.float32)
    centroids, codes = kmeans_codebook(values, 2)
    init = np.linspace(0.0, 10.0, 4).astype(np.float32)
    assert np.array_equal(centroids[1:3], init[1:3])
    assert centroids[0] == pytest.approx(0.075) and centroids[3] == pytest.approx(9.925)
    assert set(codes.tolist()) == {0, 3}


def test_fewer_distinct_values_than_codes() -> None:
    rng = np.random.default_rng(2)
    palette = np.array([-0.5, -0.125, 0.0, 0.25, 0.75], dtype=np.float32)
    values = rng.choice(palette, 1000)
    centroids, codes = kmeans_codebook(values, 3)
    assert np.array_equal(centroids, palette)
    assert np.array_equal(centroids[codes], values)
    two, two_codes = kmeans_codebook(values, 1)
    assert two.size == 2 and set(two_codes.tolist()) <= {0, 1}
    constant, constant_codes = kmeans_codebook(np.full(10, 0.3, dtype=np.float32), 4)
    assert np.array_equal(constant, np.array([0.3], dtype=np.float32)) and not constant_codes.any()
    empty, empty_codes = kmeans_codebook(np.zeros(0, dtype=np.float32), 4)
    assert empty.size == 0 and empty_codes.size == 0


def test_centroid_gradients_are_member_sums() -> None:
    rng = np.random.default_rng(9)
    weight, mask = _case((30, 20), 4, 0.6)
    shared = kmeans_quantize(weight, mask, 3)
    k = shared.centroids.size
    grad = torch.from_numpy(rng.normal(size=(30, 20)).astype(np.float32))
    kept_grad = grad[mask].numpy()
    expected = np.array([kept_grad[shared.codes == j].astype(np.float64).sum() for j in range(k)])
    from_kept = centroid_gradients(kept_grad, shared.codes, k)
    from_full = centroid_gradients(grad, shared.codes, k, mask=mask)
    np.testing.assert_allclose(from_kept, expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(from_kept, from_full)
    assert centroid_gradients(kept_grad, shared.codes, k + 2)[k:].tolist() == [0.0, 0.0]
    updated = apply_centroid_update(shared.centroids, from_kept, 0.01)
    assert updated.dtype == np.float32
    np.testing.assert_allclose(updated, shared.centroids - 0.01 * expected, rtol=1e-6, atol=1e-7)
    moved = kmeans_dequantize(SharedWeight(updated, shared.codes, shared.shape), mask)
    assert torch.equal(moved[mask], torch.from_numpy(updated[shared.codes]))


def test_bad_inputs_are_rejected() -> None:
    weight, mask = _case((4, 4), 0, 0.5)
    with pytest.raises(ValueError):
        kmeans_codebook(np.ones(4, dtype=np.float32), 9)
    with pytest.raises(ValueError):
        kmeans_codebook(np.array([1.0, np.nan], dtype=np.float32), 2)
    with pytest.raises(ValueError):
        kmeans_quantize(weight, mask.float(), 2)
    with pytest.raises(ValueError):
        centroid_gradients(np.ones(3), np.array([0, 4, 1], dtype=np.uint8), 4)
    shared = kmeans_quantize(weight, mask, 2)
    assert 0 < shared.codes.size < mask.numel()
    with pytest.raises(ValueError):
        kmeans_dequantize(shared, torch.ones_like(mask))  # code count does not match
    with pytest.raises(ValueError):
        kmeans_dequantize(shared, mask.reshape(2, 8))
