"""``nn.Embedding`` and ``nn.EmbeddingBag``: an ``embedding`` layer, a lookup table read by integer indices.

The weight is ``(num_embeddings, embedding_dim)``: its rows are the vocabulary, so its codes are per row (dim 0)
and it reads no input channels. ``LayerSpec.in_channels`` is the vocabulary size, ``out_channels`` the embedding
size. A lookup multiplies nothing: MACs are 0 (PyTorch's FLOP counter agrees; a bag's sums are additions). The
vocabulary is not a channel, so structured pruning leaves the embedding size whole. A model that reads float inputs
casts them with ``.long()`` before the lookup; the table is timed on random indices.
"""

from __future__ import annotations

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind


class EmbeddingKind(LayerKind):
    """``nn.Embedding``: one row per index; a sample is any shape of indices."""

    module_type = nn.Embedding
    channel_pruning = False

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """The table ``weight``, one code row per vocabulary entry."""
        return (CompressibleWeight("weight", out_dim=0, in_dim=None),)

    def channels(self, module: nn.Module) -> Channels:
        """Vocabulary size in, embedding size out."""
        return Channels(int(module.num_embeddings), int(module.embedding_dim))

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Vocabulary and embedding sizes; kernel, stride, groups and sizes are 1; no MACs."""
        channels = self.channels(module)
        return LayerSpec(
            name=name, kind="embedding", in_channels=channels.in_channels, out_channels=channels.out_channels,
            kernel=1, stride=1, groups=1, input_hw=1, output_hw=1, params=int(module.weight.numel()), macs=0,
        )

    def timing_input(
        self, module: nn.Module, sample_shape: tuple[int, ...], batch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Random ``int64`` indices into the table."""
        return torch.randint(0, int(module.num_embeddings), (batch, *sample_shape), generator=generator)

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A 10-entry table of 4-element rows, looked up at 3 positions."""
        return nn.Embedding(10, 4), (3,)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain table of the same configuration and weights."""
        layer = nn.Embedding(
            module.num_embeddings, module.embedding_dim, module.padding_idx, module.max_norm, module.norm_type,
            module.scale_grad_by_freq, module.sparse,
        )
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``embedding``, vocabulary and embedding sizes, then the shape of one sample's indices."""
        return ("embedding", module.num_embeddings, module.embedding_dim, *sample_shape)


class EmbeddingBagKind(EmbeddingKind):
    """``nn.EmbeddingBag`` called on 2-d indices: each sample is one bag, reduced by the bag's ``mode``."""

    module_type = nn.EmbeddingBag

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A 10-entry table of 4-element rows, averaged over bags of 3."""
        return nn.EmbeddingBag(10, 4, mode="mean"), (3,)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain bag of the same configuration and weights."""
        layer = nn.EmbeddingBag(
            module.num_embeddings, module.embedding_dim, module.max_norm, module.norm_type,
            module.scale_grad_by_freq, module.mode, module.sparse, include_last_offset=module.include_last_offset,
            padding_idx=module.padding_idx,
        )
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``embedding_bag``, vocabulary and embedding sizes, the mode, then the bag size."""
        return ("embedding_bag", module.num_embeddings, module.embedding_dim, module.mode, *sample_shape)
