"""``nn.MultiheadAttention``: an ``attention`` layer, called as self-attention on one tensor.

The compressible weights are the input projection (``in_proj_weight``, or ``q_proj_weight``, ``k_proj_weight`` and
``v_proj_weight`` when keys and values have their own sizes), whose dim 1 reads the input channels, and the output
projection ``out_proj.weight``, which reads the attention's own features; dim 0 holds each one's outputs. The output
projection is an ``nn.Linear`` the attention applies through its weight (``F.multi_head_attention_forward``), never
called as a module, so it is not a layer of its own.

``LayerSpec.in_channels`` and ``out_channels`` are ``embed_dim``, ``input_hw`` and ``output_hw`` the sequence
length ``L``. MACs count self-attention (keys as long as queries, plus ``bias_k`` and the zero position when the
layer adds them: ``S`` keys): ``L x`` the projection weights, plus ``L x S x embed_dim`` for the scores ``Q K^T``
and as many for the weighted sum of the values.

Structured pruning removes whole heads. ``nn.MultiheadAttention`` has one ``embed_dim`` for its queries, its heads
together and its output, so a removed head's ``head_dim`` features are also removed from the layer's inputs and
outputs (its channels are tied: the producers of its queries, keys and values and the consumers of its output lose
the same channels). The layer then computes what the unpruned one does with those input features unread and those
heads' outputs zeroed (:meth:`AttentionKind.mask_outputs`). Torch-Pruning's own pruner is not used: it keeps
``num_heads`` and shrinks every head instead, which regroups the features into different heads (and rescales the
scores by the new ``head_dim``), and with keys and values of their own sizes it leaves the query projection's
inputs whole. A layer whose keys and values have sizes of their own (``kdim``/``vdim``), of a single head, or that
reads the model's input itself, keeps its channels (``methods.structured``); so does one in a group a LayerNorm
normalises (a ``nn.TransformerEncoderLayer``'s): the output check finds that removing features changes the
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind, keep_entries, zero_entries
from methods.layer_kinds.recurrent import sequence_sample_shape


class SelfAttention(nn.Module):
    """A multi-head attention layer called on one tensor: ``attention(x, x, x)``, without attention weights."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention's output for queries, keys and values ``x``."""
        return self.attention(x, x, x, need_weights=False)[0]


def _attention(module: nn.Module) -> nn.Module:
    """The attention layer itself, also when ``module`` is its :class:`SelfAttention` copy."""
    return module.attention if isinstance(module, SelfAttention) else module


class AttentionKind(LayerKind):
    """Multi-head attention; not factorisable; heads are pruned with the input and output features they share."""

    module_type = nn.MultiheadAttention
    own_pruning = True
    tied_channels = True

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """The input projection(s), reading the input channels in dim 1, then the output projection."""
        separate = not module._qkv_same_embed_dim  # noqa: SLF001 - how the module itself tells
        inputs = ("q_proj_weight", "k_proj_weight", "v_proj_weight") if separate else ("in_proj_weight",)
        return (
            *(CompressibleWeight(name, out_dim=0, in_dim=1) for name in inputs),
            CompressibleWeight("out_proj.weight", out_dim=0, in_dim=None),
        )

    def run(self, module: nn.Module, inputs: torch.Tensor) -> object:
        """Self-attention over ``inputs``, without attention weights."""
        return module(inputs, inputs, inputs, need_weights=False)

    def channels(self, module: nn.Module) -> Channels:
        """``embed_dim`` in and out."""
        return Channels(int(module.embed_dim), int(module.embed_dim))

    def channel_refusal(self, module: nn.Module) -> str | None:
        """Keys and values of sizes of their own are not the layer's channels; a single head cannot go."""
        if not module._qkv_same_embed_dim:  # noqa: SLF001 - how the module itself tells
            return "its keys and values have sizes of their own (kdim, vdim), which its heads cannot share"
        if module.num_heads < 2:
            return "it has a single head, which pruning would remove whole"
        return None

    def channel_units(self, module: nn.Module) -> tuple[tuple[int, ...], ...]:
        """The heads: ``num_heads`` blocks of ``head_dim`` consecutive features."""
        width = int(module.head_dim)
        return tuple(tuple(range(h * width, (h + 1) * width)) for h in range(int(module.num_heads)))

    def remove_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Removes the heads made of features ``idxs``, and those input and output features."""
        drop, width = set(idxs), int(module.head_dim)
        heads = {i // width for i in drop}
        if drop != {h * width + j for h in heads for j in range(width)}:
            raise ValueError(f"attention features {sorted(drop)} are not whole heads of {width}")
        embed = int(module.embed_dim)
        keep = [i for i in range(embed) if i not in drop]
        projected = [p * embed + i for p in range(3) for i in keep]  # queries, keys, values
        keep_entries(module, "in_proj_weight", projected, 0)
        keep_entries(module, "in_proj_weight", keep, 1)
        keep_entries(module, "in_proj_bias", projected, 0)
        for name in ("bias_k", "bias_v"):
            keep_entries(module, name, keep, 2)
        for dim in (0, 1):
            keep_entries(module, "out_proj.weight", keep, dim)
        keep_entries(module, "out_proj.bias", keep, 0)
        module.out_proj.in_features = module.out_proj.out_features = len(keep)
        module.embed_dim = module.kdim = module.vdim = len(keep)
        module.num_heads -= len(heads)

    remove_inputs = remove_outputs

    def mask_outputs(self, module: nn.Module, idxs: Sequence[int]) -> None:
        """Zeroes the input projection's columns that read features ``idxs`` and the output projection's columns
        that read those heads."""
        zero_entries(module, "in_proj_weight", idxs, 1)
        zero_entries(module, "out_proj.weight", idxs, 1)

    def sample_shape(self, module: nn.Module, inputs: torch.Tensor) -> tuple[int, ...]:
        """``(sequence, embed_dim)`` of the queries, whatever ``batch_first`` is."""
        return sequence_sample_shape(inputs, module.batch_first)

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Embedding size, sequence length and self-attention MACs; kernel and stride are 1, groups 1."""
        params = int(sum(module.get_parameter(w.name).numel() for w in self.weights(module)))
        sequence = self.sample_shape(module, inputs)[0]
        keys = sequence + (module.bias_k is not None) + bool(module.add_zero_attn)
        return LayerSpec(
            name=name, kind="attention", in_channels=int(module.embed_dim), out_channels=int(module.embed_dim),
            kernel=1, stride=1, groups=1, input_hw=sequence, output_hw=sequence, params=params,
            macs=sequence * params + 2 * sequence * keys * int(module.embed_dim),
        )

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """Two heads over 8 features, on 5 positions."""
        return nn.MultiheadAttention(8, 2, batch_first=True), (5, 8)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A :class:`SelfAttention` over a plain, batch-first copy of the layer with the same weights."""
        layer = nn.MultiheadAttention(
            module.embed_dim, module.num_heads, module.dropout, bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn, kdim=module.kdim,
            vdim=module.vdim, batch_first=True,
        )
        layer.load_state_dict(module.state_dict())
        return SelfAttention(layer).eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``attention``, embedding size, heads, key and value sizes, bias, added key/value bias, added zero
        position, then the sequence length (the layer or its :class:`SelfAttention` copy)."""
        layer = _attention(module)
        return (
            "attention", layer.embed_dim, layer.num_heads, layer.kdim, layer.vdim, layer.in_proj_bias is not None,
            layer.bias_k is not None, layer.add_zero_attn, *sample_shape[:1],
        )
