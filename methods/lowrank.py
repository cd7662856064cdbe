"""Low-rank factorisation of compressible layers by truncated SVD (Denton et al., 2014).

A layer with weight ``W`` (``out x fan_in``, a conv's weight flattened over input channels and
kernel) is replaced by two layers whose product is the best rank-``r`` approximation of ``W``:

* Linear: ``Linear(in, r, bias=False)`` then ``Linear(r, out)``;
* Conv2d: ``Conv2d(in, r, k, stride, padding, dilation, bias=False)`` then a 1x1 ``Conv2d(r, out)``;
* another layer kind: its ``LayerKind.factors`` (see :mod:`methods.layer_kinds`).

The pair is an ``nn.Sequential`` at the layer's own name, so its factors are ``NAME.0`` and
``NAME.1`` and the rest of the pipeline (masks, codes, packing) addresses them like any layer.
The singular values are split evenly (``sqrt(S)`` into each factor) so both have similar ranges.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from methods.layer_kinds import kind_of

Factorised = dict[str, int]
"""Rank per factorised layer name, stored in the packed file so loading can rebuild the shapes."""


def full_rank(module: nn.Module) -> int:
    """The largest useful rank of a Linear or Conv2d weight: ``min(out, fan_in)``."""
    weight = module.weight
    return int(min(weight.shape[0], weight[0].numel()))


def rank_for(module: nn.Module, fraction: float) -> int:
    """The rank a policy's ``rank`` fraction means for ``module``: ``round(fraction * full rank)``, at least 1."""
    return max(1, min(full_rank(module), int(round(fraction * full_rank(module)))))


def factorisable(module: nn.Module) -> bool:
    """True when the module's layer kind factorises it (a Linear, an ungrouped Conv2d; not grouped convs)."""
    kind = kind_of(module)
    return kind is not None and kind.factorisable(module)


def saves_parameters(module: nn.Module, rank: int) -> bool:
    """True when the two factors hold fewer weights than the layer: ``rank * (out + fan_in) < out * fan_in``."""
    out, fan_in = module.weight.shape[0], module.weight[0].numel()
    return rank * (out + fan_in) < out * fan_in


def empty_factors(module: nn.Module, rank: int) -> nn.Sequential:
    """The two-layer replacement of ``module`` at ``rank``, with uninitialised weights (for loading)."""
    kind = kind_of(module)
    if kind is None:
        raise ValueError(f"cannot factorise {type(module).__name__}: not a compressible layer kind")
    return kind.factors(module, rank)


def factorise(module: nn.Module, rank: int) -> nn.Sequential:
    """The rank-``rank`` truncated-SVD replacement of a Linear or ungrouped Conv2d.

    Args:
        module: the layer to approximate (not modified).
        rank: kept singular values, 1 to :func:`full_rank`.

    Raises:
        ValueError: for another layer type, a grouped conv or a rank out of range.
    """
    if not 1 <= rank <= full_rank(module):
        raise ValueError(f"rank must be in [1, {full_rank(module)}], got {rank}")
    factors = empty_factors(module, rank)
    weight = module.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).to(weight.dtype)
    second = (u[:, :rank] * root[None, :]).to(weight.dtype)
    with torch.no_grad():
        factors[0].weight.copy_(first.reshape(factors[0].weight.shape))
        factors[1].weight.copy_(second.reshape(factors[1].weight.shape))
        if module.bias is not None:
            factors[1].bias.copy_(module.bias.detach())
    return factors.train(module.training)


def _set_module(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)


def factorise_layers(model: nn.Module, fractions: Mapping[str, float]) -> Factorised:
    """Factorises the named layers of ``model`` in place at their rank fraction.

    A layer is left whole when its rank fraction is 1, when it cannot be factorised (grouped conv)
    or when its factors would not hold fewer weights than it does.

    Returns:
        The rank of every layer that was factorised.
    """
    done: Factorised = {}
    for name, fraction in fractions.items():
        module = model.get_submodule(name)
        if fraction >= 1.0 or not factorisable(module):
            continue
        rank = rank_for(module, fraction)
        if not saves_parameters(module, rank):
            continue
        _set_module(model, name, factorise(module, rank))
        done[name] = rank
    return done


def replay_factorisation(model: nn.Module, factorised: Mapping[str, int]) -> None:
    """Rebuilds the factorised shapes recorded by :func:`factorise_layers` (weights are loaded afterwards)."""
    for name, rank in factorised.items():
        _set_module(model, name, empty_factors(model.get_submodule(name), int(rank)))


def factor_names(name: str, factorised: Mapping[str, int]) -> list[str]:
    """The weight-holding module names a policy layer ends up as: its two factors, or itself."""
    return [f"{name}.0", f"{name}.1"] if name in factorised else [name]
