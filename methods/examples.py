"""Example batches built from a sample shape alone: float inputs, or index inputs (token ids) in their range."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.spec import as_shape


def zeros_batch(input_shape: Sequence[int], batch: int = 1) -> torch.Tensor:
    """A batch of zeros of the sample shape (int64 for index inputs, whose index 0 is always valid)."""
    shape = as_shape(input_shape)
    return torch.zeros(batch, *shape, dtype=torch.int64 if shape.vocab else torch.float32)


def random_batch(input_shape: Sequence[int], batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random batch of the sample shape: standard normal floats, or uniform indices in ``[0, vocab)``."""
    shape = as_shape(input_shape)
    if shape.vocab:
        return torch.randint(0, shape.vocab, (batch, *shape), generator=generator)
    return torch.randn(batch, *shape, generator=generator)
