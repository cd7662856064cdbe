"""Kinds of compressible layers, by name: which modules the pipeline compresses and how.

A new kind is one module with a :class:`LayerKind` subclass plus one ``LAYER_KINDS.register`` line
below; ``tests/test_layer_kind_conformance.py`` checks every entry.
"""

from __future__ import annotations

from torch import nn

from core.registry import Registry
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind
from methods.layer_kinds.conv2d import Conv2dKind
from methods.layer_kinds.linear import LinearKind

LAYER_KINDS: Registry[LayerKind] = Registry("layer kind")
"""Compressible layer kinds; a module is of the first registered kind that matches it."""
LAYER_KINDS.register("conv2d", Conv2dKind())
LAYER_KINDS.register("linear", LinearKind())


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``, or ``None`` when it is not a compressible layer."""
    for _, kind in LAYER_KINDS.items():
        if kind.matches(module):
            return kind
    return None


def is_compressible(module: nn.Module) -> bool:
    """True when ``module`` is of a registered kind."""
    return kind_of(module) is not None


__all__ = ["LAYER_KINDS", "Channels", "CompressibleWeight", "LayerKind", "is_compressible", "kind_of"]
