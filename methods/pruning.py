"""Fine-grained (unstructured) magnitude pruning."""

from __future__ import annotations

import math

import numpy as np
import torch

_COUNT_DECIMALS = 6
"""``sparsity * numel`` is rounded to this many decimals before flooring, so that
e.g. 0.29 * 100 (= 28.999999999999996 in binary floating point) prunes 29 weights."""


def pruned_count(numel: int, sparsity: float) -> int:
    """Number of weights :func:`magnitude_mask` zeroes: ``floor(sparsity * numel)``, keeping >= 1.

    Raises:
        ValueError: If ``sparsity`` is not in [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    count = math.floor(round(sparsity * numel, _COUNT_DECIMALS))
    return max(0, min(count, numel - 1))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that zeroes the ``floor(sparsity * numel)`` smallest-magnitude weights.

    Ties in magnitude are broken by flat (row-major) index: the earlier weight is
    pruned first (the order of a stable sort). At least one weight is always kept.

    Args:
        weight: Any-shaped weight tensor.
        sparsity: Fraction of weights to prune, in [0, 1).

    Returns:
        Bool tensor of ``weight``'s shape (on CPU), True = kept.
    """
    return lowest_mask(weight.detach().abs(), sparsity)


def lowest_mask(scores: torch.Tensor, sparsity: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask that prunes the ``floor(sparsity * numel)`` lowest ``scores`` (ties: earlier index first).

    Args:
        scores: Importance per weight (any shape); lower is pruned first.
        sparsity: Fraction of weights to prune, in [0, 1).
        previous: An earlier keep-mask; its pruned positions are pruned first, so that
            masks only shrink over the rounds of iterative pruning.

    Returns:
        Bool tensor of ``scores``' shape (on CPU), True = kept. At least one weight is kept.
    """
    numel = scores.numel()
    count = pruned_count(numel, sparsity)
    keep = np.ones(numel, dtype=np.bool_)
    if count:
        exact = scores.dtype in (torch.float32, torch.float64)  # float32 orders and ties exactly as float64
        values = scores.detach().cpu().to(scores.dtype if exact else torch.float64).numpy().reshape(-1).copy()
        if previous is not None:
            values[~previous.cpu().numpy().reshape(-1)] = -np.inf
        # O(n) selection instead of a full sort: everything below the count-th
        # smallest score goes, then the earliest of the scores equal to it.
        threshold = np.partition(values, count - 1)[count - 1]
        below = values < threshold
        ties = np.flatnonzero(values == threshold)[: count - int(np.count_nonzero(below))]
        keep[below] = False
        keep[ties] = False
    return torch.from_numpy(keep).reshape(scores.shape)


def apply_mask(module_weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned positions of ``module_weight`` in place (no autograd record).

    Raises:
        ValueError: If ``mask`` is not a bool tensor of the weight's shape.
    """
    if mask.dtype != torch.bool or mask.shape != module_weight.shape:
        raise ValueError(
            f"mask must be bool of shape {tuple(module_weight.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    with torch.no_grad():
        module_weight.masked_fill_(~mask, 0.0)
