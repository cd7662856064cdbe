"""Data read batch by batch: a split in memory (``TensorDataset``) or streamed (:class:`Stream`).

Training, fine-tuning and evaluation take either and never stack a streamed split: they draw its batches one at
a time. What needs a fixed, small sample of a split (BatchNorm and int8 calibration, saliency scores, the search's
validation subset, fingerprints) takes a bounded one with :func:`head` or :func:`subset`.

A :class:`Stream` wraps

* a ``DataLoader``: read as it is (its own batch size, order, collate and workers);
* a map-style dataset (``__len__`` and ``__getitem__``): batched here; shuffled by seeded random draws, so no
  permutation of the whole split is ever built;
* an ``IterableDataset``: batched here, read in its own order.

Each raw batch goes through ``to_device(batch, device) -> (inputs, targets)`` (default: a batch is an
``(inputs, targets)`` pair, moved with ``.to``), so a sample may have any structure the user's collate and
``to_device`` understand. Inputs must end as one tensor: int64 inputs are token ids, every other real dtype
becomes float32; integer targets become int64 labels, float targets float32.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from core.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(inputs, targets)`` of one batch."""
ToDevice = Callable[[object, torch.device], Batch]
"""``to_device(raw batch, device) -> (inputs, targets)`` on that device."""
Collate = Callable[[list], object]
"""``collate(list of samples) -> raw batch``, as ``DataLoader``'s ``collate_fn``."""

EVAL_BATCH = 256
"""Samples per forward pass when a streamed dataset is evaluated."""


def cast_inputs(tensor: torch.Tensor) -> torch.Tensor | None:
    """Inputs: int64 tensors stay indices (token ids); every other real dtype (uint8 images too) becomes float32;
    ``None`` for bool or complex tensors."""
    if tensor.dtype == torch.int64:
        return tensor
    return None if tensor.dtype == torch.bool or tensor.is_complex() else tensor.to(torch.float32)


def cast_targets(tensor: torch.Tensor) -> torch.Tensor | None:
    """Targets: int64 for integer tensors (labels), float32 for float ones; ``None`` for anything else."""
    if tensor.dtype == torch.bool or tensor.is_complex():
        return None
    return tensor.to(torch.float32 if tensor.dtype.is_floating_point else torch.int64)


def pair_to_device(batch: object, device: torch.device) -> Batch:
    """The default ``to_device``: a batch is an ``(inputs, targets)`` pair of tensors."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"a batch is a {type(batch).__name__}, not an (inputs, targets) pair")
    inputs, targets = batch
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"a batch's inputs are a {type(inputs).__name__}, not a tensor")
    return inputs.to(device), targets.to(device)


class Stream:
    """One split read batch by batch, never held in memory as a whole (see the module docstring).

    Args:
        source: a ``DataLoader``, a map-style dataset or an ``IterableDataset``.
        collate: builds a raw batch from a list of samples (default: torch's ``default_collate``); unused for a
            ``DataLoader``, which has its own.
        to_device: turns a raw batch into ``(inputs, targets)`` on a device (default :func:`pair_to_device`).
        where: names the split in error messages, e.g. ``"task factory 't.py:make', train split,"``.
    """

    def __init__(
        self, source: object, *, collate: Collate | None = None, to_device: ToDevice | None = None, where: str = "data"
    ) -> None:
        if not isinstance(source, (DataLoader, Dataset)) and not (
            hasattr(source, "__len__") and hasattr(source, "__getitem__")
        ):
            raise UsageError(f"{where} is a {type(source).__name__}; give a torch DataLoader, a Dataset "
                             "(__len__ and __getitem__) or an IterableDataset")
        self.source = source
        self.collate = collate or default_collate
        self.to_device = to_device or pair_to_device
        self.where = where
        self._head: TensorDataset | None = None
        """The longest head read so far (:func:`head`), so that checks and calibration read the split's start once."""
        self._head_is_all = False
        """True when that head ended with the split."""

    @property
    def size(self) -> int | None:
        """Samples in the split, when the source knows (``None``: an iterable without ``__len__``)."""
        dataset = self.source.dataset if isinstance(self.source, DataLoader) else self.source
        try:
            return int(len(dataset))  # type: ignore[arg-type]
        except TypeError:
            return None

    @property
    def iterable(self) -> bool:
        """Whether the source is read in its own order (an ``IterableDataset``, or any ``DataLoader``)."""
        return isinstance(self.source, (DataLoader, IterableDataset))

    def raw_batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[object]:
        """One pass of raw batches: the loader's own, or ``batch_size`` samples at a time (drawn at random with
        ``generator`` from a map-style dataset, in order without one)."""
        if isinstance(self.source, DataLoader):
            yield from self.source
            return
        if isinstance(self.source, IterableDataset):
            samples = iter(self.source)
            while chunk := list(itertools.islice(samples, batch_size)):
                yield self.collate(chunk)
            return
        n = self.size or 0
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            if generator is None:
                indices = range(start, start + count)
            else:
                indices = torch.randint(n, (count,), generator=generator).tolist()
            yield self.collate([self.source[i] for i in indices])  # type: ignore[index]

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Iterator[Batch]:
        """One pass of ``(inputs, targets)`` batches on ``device`` (see :meth:`raw_batches`).

        Raises:
            UsageError: a batch that ``to_device`` cannot turn into an input tensor and a target tensor.
        """
        device = torch.device(device)
        for number, raw in enumerate(self.raw_batches(batch_size, generator)):
            yield self.checked(raw, device, number)

    def checked(self, raw: object, device: torch.device, number: int = 0) -> Batch:
        """``to_device(raw, device)`` with the inputs and targets cast (module docstring).

        Raises:
            UsageError: not an input tensor and a target tensor of one batch.
        """
        try:
            inputs, targets = self.to_device(raw, device)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{self.where} batch {number} cannot be used ({exc}); batches must be (inputs, "
                             "targets) pairs of tensors, or give to_device(batch, device) -> (inputs, targets)"
                             ) from exc
        x = cast_inputs(inputs) if isinstance(inputs, torch.Tensor) else None
        y = cast_targets(targets) if isinstance(targets, torch.Tensor) else None
        if x is None or y is None or x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UsageError(f"{self.where} batch {number} is not a batch of input tensors and targets of one "
                             "length; make to_device return (inputs (N, ...), targets (N, ...))")
        return x, y


Data = TensorDataset | Stream
"""A split: in memory or streamed."""


def sample_count(data: Data) -> int | None:
    """Samples in ``data`` (``None``: a stream of unknown length)."""
    return len(data) if isinstance(data, TensorDataset) else data.size


def epoch_batches(
    data: Data, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Iterator[Batch]:
    """One pass over ``data`` on ``device``: shuffled with ``generator`` (an in-memory split by a permutation drawn
    from it; a map-style stream by random draws; a loader or iterable in its own order), in order without one."""
    if isinstance(data, Stream):
        yield from data.batches(batch_size, generator, device)
        return
    inputs, targets = data.tensors
    n = len(targets)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
        else:
            idx = order[start : start + batch_size]
            yield inputs[idx].to(device), targets[idx].to(device)


def head(data: Data, count: int) -> TensorDataset:
    """The first ``count`` samples of ``data`` (fewer if it has fewer) in memory, on the CPU; a stream's are read
    once and kept (the longest head asked for), so a loader that shuffles gives the same first samples each time."""
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[:count] for t in data.tensors))
    cached = data._head  # noqa: SLF001 - the stream's own cache
    if cached is None or (len(cached) < count and not data._head_is_all):  # noqa: SLF001
        cached, data._head_is_all = _read_head(data, count)  # noqa: SLF001
        data._head = cached  # noqa: SLF001
    return TensorDataset(*(t[:count] for t in cached.tensors))


def _read_head(data: Stream, count: int) -> tuple[TensorDataset, bool]:
    """The first ``count`` samples of a stream, and whether the stream ended before them."""
    taken: list[Batch] = []
    have = 0
    for inputs, targets in data.batches(min(count, EVAL_BATCH)):
        taken.append((inputs[: count - have], targets[: count - have]))
        have += len(taken[-1][1])
        if have >= count:
            break
    if not taken:
        raise UsageError(f"{data.where} is empty; every split needs at least one sample")
    return TensorDataset(torch.cat([x for x, _ in taken]), torch.cat([y for _, y in taken])), have < count


def subset(data: Data, count: int, seed: int = 0) -> TensorDataset:
    """A fixed, seeded sample of at most ``count`` samples in memory: all of a split that small, else ``count``
    distinct samples drawn with ``seed`` (kept in split order), or the first ``count`` of a stream read in its
    own order."""
    size = sample_count(data)
    if isinstance(data, TensorDataset) and size <= count:
        return data
    if size is None or (isinstance(data, Stream) and data.iterable):
        return head(data, count)
    if size <= count:
        return head(data, size)
    picked = sorted(random.Random(seed).sample(range(size), count))  # never builds a permutation of the split
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[picked] for t in data.tensors))
    raw = data.collate([data.source[i] for i in picked])  # type: ignore[index]
    return TensorDataset(*data.checked(raw, torch.device("cpu")))
