"""Kinds of compressible layers, by name: which modules the pipeline compresses and how.

A new kind is one module with a :class:`LayerKind` subclass plus one ``LAYER_KINDS.register`` line
below; ``tests/test_layer_kind_conformance.py`` checks every entry.
"""

from __future__ import annotations

import torch
from torch import nn

from core.registry import Registry
from methods.layer_kinds.attention import AttentionKind
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind
from methods.layer_kinds.conv1d import Conv1dKind
from methods.layer_kinds.conv2d import Conv2dKind
from methods.layer_kinds.conv3d import Conv3dKind
from methods.layer_kinds.conv_transpose import ConvTransposeKind
from methods.layer_kinds.embedding import EmbeddingBagKind, EmbeddingKind
from methods.layer_kinds.linear import LinearKind
from methods.layer_kinds.recurrent import GRUKind, LSTMKind, RNNKind

LAYER_KINDS: Registry[LayerKind] = Registry("layer kind")
"""Compressible layer kinds; a module is of the first registered kind that matches it."""
LAYER_KINDS.register("conv2d", Conv2dKind())
LAYER_KINDS.register("linear", LinearKind())
LAYER_KINDS.register("conv1d", Conv1dKind())
LAYER_KINDS.register("conv3d", Conv3dKind())
LAYER_KINDS.register("conv_transpose", ConvTransposeKind())
LAYER_KINDS.register("embedding", EmbeddingKind())
LAYER_KINDS.register("embedding_bag", EmbeddingBagKind())
LAYER_KINDS.register("lstm", LSTMKind())
LAYER_KINDS.register("gru", GRUKind())
LAYER_KINDS.register("rnn", RNNKind())
LAYER_KINDS.register("attention", AttentionKind())


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``, or ``None`` when it is not a compressible layer."""
    for _, kind in LAYER_KINDS.items():
        if kind.matches(module):
            return kind
    return None


def is_compressible(module: nn.Module) -> bool:
    """True when ``module`` is of a registered kind."""
    return kind_of(module) is not None


def weight_keys(model: nn.Module, name: str) -> tuple[str, ...]:
    """Parameter names (``model.named_parameters()`` keys) of the compressible weights of layer ``name``.

    Raises:
        ValueError: when ``name`` is not a compressible layer of ``model``.
    """
    module = model.get_submodule(name)
    kind = kind_of(module)
    if kind is None:
        raise ValueError(f"{name!r} is a {type(module).__name__}, not a compressible layer")
    return tuple(f"{name}.{weight.name}" if name else weight.name for weight in kind.weights(module))


def parameter_name(model: nn.Module, key: str) -> str:
    """``key`` as a ``named_parameters()`` name: a parameter name (``rnn.weight_hh_l0``, ``attn.out_proj.weight``)
    as it is, a layer name (``features.0``) as its ``weight``'s."""
    try:
        model.get_submodule(key)
    except AttributeError:
        return key
    return f"{key}.weight" if key else "weight"


def owner_of(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    """The module holding a compressible weight and the weight's attribute name there (``key`` as for
    :func:`parameter_name`).

    Raises:
        AttributeError: when ``key`` names neither a parameter nor a layer with a weight.
    """
    path, _, attr = parameter_name(model, key).rpartition(".")
    owner = model.get_submodule(path)
    if not isinstance(getattr(owner, attr, None), torch.Tensor):
        raise AttributeError(f"{key!r} is neither a parameter nor a layer with a weight")
    return owner, attr


def weight_of(model: nn.Module, key: str) -> torch.Tensor:
    """The weight tensor :func:`owner_of` finds for ``key``."""
    owner, attr = owner_of(model, key)
    return getattr(owner, attr)


def layer_weights(model: nn.Module, name: str) -> tuple[torch.Tensor, ...]:
    """The compressible weight tensors of layer ``name`` (detached), in the order of :func:`weight_keys`."""
    return tuple(weight_of(model, key).detach() for key in weight_keys(model, name))


__all__ = [
    "LAYER_KINDS", "Channels", "CompressibleWeight", "LayerKind", "is_compressible", "kind_of", "layer_weights",
    "owner_of", "parameter_name", "weight_keys", "weight_of",
]
