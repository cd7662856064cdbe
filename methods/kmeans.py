"""Deep Compression weight sharing: one 1-D k-means codebook per layer.

The kept weights (mask True) of a layer are clustered into ``k = min(2**bits, distinct values)``
float32 centroids; each kept weight stores the uint8 index of its centroid and reconstructs as
that centroid. Pruned positions reconstruct to exactly ``+0.0``.

Clustering follows Deep Compression: linear initialisation (centroids evenly spaced between the
smallest and largest kept weight), then Lloyd iterations. In 1-D the clusters are runs of the
sorted values split at the centroid midpoints, so after one sort each iteration costs
``O(k log n)`` (``searchsorted`` of the midpoints, cluster sums from a prefix sum). When the
layer has at most ``2**bits`` distinct kept values the centroids are those values (zero error).

Codebook fine-tuning: each shared centroid is trained with the sum of its weights' gradients
(:func:`centroid_gradients`, :func:`apply_centroid_update`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from methods.quantization import FP32_BITS, check_bits, check_mask

DEFAULT_ITERATIONS = 20


@dataclass(frozen=True, eq=False)
class SharedWeight:
    """Codebook and codes of one weight-shared tensor."""

    centroids: np.ndarray
    """float32 [k] (ascending as produced by :func:`kmeans_codebook`)."""
    codes: np.ndarray
    """uint8 centroid index of each kept weight, in row-major order of kept positions."""
    shape: tuple[int, ...]


def kmeans_codebook(
    values: np.ndarray, bits: int, iterations: int = DEFAULT_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of ``values`` with at most ``2**bits`` centroids.

    Args:
        values: Finite weights to share (any shape; flattened).
        bits: Code width 1-8; ``k = min(2**bits, number of distinct values)``.
        iterations: Maximum Lloyd iterations (stops early when the centroids are stable).

    Returns:
        ``(centroids, codes)``: float32 centroids in ascending order and the uint8 index of the
        nearest centroid per value (ties go to the lower centroid).

    Raises:
        ValueError: On a bad bit width or iteration count, or non-finite values.
    """
    check_bits(bits)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    ordered = np.sort(flat)
    if not (np.isfinite(ordered[0]) and np.isfinite(ordered[-1])):
        raise ValueError("values must be finite")
    new_value = np.empty(ordered.size, dtype=bool)
    new_value[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_value[1:])
    distinct = ordered[new_value]
    if distinct.size <= 1 << bits:
        centroids = distinct
    else:
        centroids = np.sort(_lloyd(ordered.astype(np.float64), 1 << bits, iterations).astype(np.float32))
    return centroids, _assign(flat, centroids)


def kmeans_quantize(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> SharedWeight:
    """Share the kept weights of ``weight`` through a ``bits``-bit k-means codebook."""
    check_mask(weight, mask)
    flat = _numpy_weight(weight).reshape(-1)
    positions = np.flatnonzero(_numpy_mask(mask).reshape(-1))
    centroids, codes = kmeans_codebook(flat[positions], bits)
    return SharedWeight(centroids=centroids, codes=codes, shape=tuple(weight.shape))


def kmeans_dequantize(shared: SharedWeight, mask: torch.Tensor) -> torch.Tensor:
    """Float32 weight with every kept position set to its centroid and pruned positions +0.0.

    Raises:
        ValueError: If the mask, codes and codebook do not match.
    """
    shape = tuple(shared.shape)
    if tuple(mask.shape) != shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool of shape {shape}, got {mask.dtype} {tuple(mask.shape)}")
    positions = np.flatnonzero(_numpy_mask(mask).reshape(-1))
    codes = np.asarray(shared.codes, dtype=np.uint8).reshape(-1)
    centroids = np.asarray(shared.centroids, dtype=np.float32).reshape(-1)
    if codes.size != positions.size:
        raise ValueError(f"expected {positions.size} codes, got {codes.size}")
    if codes.size and int(codes.max()) >= centroids.size:
        raise ValueError("a code is outside the codebook")
    out = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.float32)
    out[positions] = centroids[codes]
    return torch.from_numpy(out).reshape(shape)


def kmeans_quantize_dequantize(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
    """Weight-share then reconstruct (no gradient); ``bits == 32`` keeps the weights as float32.

    Bit-identical to ``kmeans_dequantize(kmeans_quantize(weight, mask, bits), mask)``.
    """
    if bits == FP32_BITS:
        check_mask(weight, mask)
        out = np.where(_numpy_mask(mask), _numpy_weight(weight), np.float32(0.0)).astype(np.float32)
        return torch.from_numpy(out)
    return kmeans_dequantize(kmeans_quantize(weight, mask, bits), mask)


def centroid_gradients(
    grad: np.ndarray | torch.Tensor, codes: np.ndarray, k: int, mask: np.ndarray | torch.Tensor | None = None
) -> np.ndarray:
    """Sum of the weight gradients of each centroid's members (float64, length ``k``).

    Args:
        grad: Gradients of the kept weights in the order of ``codes``, or (with ``mask``) the
            full weight-shaped gradient, whose kept entries are taken in row-major order.
        codes: uint8 centroid index per kept weight.
        k: Codebook size.
        mask: Optional bool keep-mask of the weight's shape.
    """
    g = _as_numpy(grad).reshape(-1)
    if mask is not None:
        g = g[np.flatnonzero(_as_numpy(mask).reshape(-1))]
    codes = np.asarray(codes).reshape(-1)
    if g.size != codes.size:
        raise ValueError(f"expected {codes.size} gradients, got {g.size}")
    if codes.size and int(codes.max()) >= k:
        raise ValueError(f"codes must be < k = {k}")
    return np.bincount(codes.astype(np.intp), weights=g.astype(np.float64), minlength=k)


def apply_centroid_update(centroids: np.ndarray, grads: np.ndarray, lr: float) -> np.ndarray:
    """One SGD step on the codebook: ``centroids - lr * grads`` as float32.

    The index order is kept (not re-sorted) so existing codes stay valid.
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    grads = np.asarray(grads, dtype=np.float64)
    if centroids.shape != grads.shape:
        raise ValueError(f"grads must have shape {centroids.shape}, got {grads.shape}")
    return (centroids.astype(np.float64) - lr * grads).astype(np.float32)


def _lloyd(ordered: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Lloyd iterations from a linear initialisation on sorted float64 values (> k distinct)."""
    prefix = np.zeros(ordered.size + 1, dtype=np.float64)
    np.cumsum(ordered, out=prefix[1:])
    centroids = np.linspace(ordered[0], ordered[-1], k)
    inner = np.empty(k + 1, dtype=np.intp)
    inner[0], inner[-1] = 0, ordered.size
    for _ in range(iterations):
        # Cluster j holds the sorted values in (mid[j-1], mid[j]]: ties go to the lower centroid.
        inner[1:-1] = np.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2, side="right")
        sizes = np.diff(inner)
        sums = prefix[inner[1:]] - prefix[inner[:-1]]
        updated = np.where(sizes > 0, sums / np.maximum(sizes, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """uint8 index of the nearest of the ascending ``centroids`` per value (ties: lower)."""
    wide = centroids.astype(np.float64)
    return np.searchsorted((wide[:-1] + wide[1:]) / 2, values.astype(np.float64), side="left").astype(np.uint8)


def _numpy_mask(mask: torch.Tensor) -> np.ndarray:
    """The bool mask as a numpy array."""
    return mask.detach().cpu().numpy()


def _numpy_weight(weight: torch.Tensor) -> np.ndarray:
    """The weight as a float32 numpy array."""
    return weight.detach().cpu().to(torch.float32).numpy()


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor or array as a numpy array."""
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
