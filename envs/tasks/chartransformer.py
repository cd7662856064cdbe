"""A causal character-level transformer language model: token and learned position embeddings, pre-norm encoder
layers whose multi-head self-attention sees only earlier positions, a linear read-out per position.

The causal mask is a fixed upper-triangular ``-inf`` buffer (not saved in the state dict) sliced to the input's
length and passed with ``is_causal=True``, so eager PyTorch (also the fused inference kernels), tracing and ONNX
export all get the same mask without inspecting it. Kept apart from ``models.py`` because each built-in task's
weight cache is keyed by the source file of its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from envs.tasks.text import ALPHABET, SEQUENCE

DIM = 96
"""Embedding width (the attention's ``embed_dim``)."""
HEADS = 4
"""Attention heads per layer."""
LAYERS = 2
"""Encoder layers."""
FEEDFORWARD = 384
"""Hidden units of each layer's feed-forward block."""


class CharTransformer(nn.Module):
    """``(N, T)`` character indices (``T <= context``) to ``(N, T, V)`` next-character logits."""

    def __init__(
        self,
        vocab: int = len(ALPHABET),
        dim: int = DIM,
        heads: int = HEADS,
        layers: int = LAYERS,
        feedforward: int = FEEDFORWARD,
        context: int = SEQUENCE,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(context, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, feedforward, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)
        mask = torch.full((context, context), float("-inf")).triu(diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the next character at every position, from the characters up to it."""
        length = x.shape[1]
        positions = torch.arange(length, device=x.device).unsqueeze(0)
        tokens = self.embed(x) + self.position(positions)
        mask = self.causal_mask[:length, :length]
        return self.head(self.encoder(tokens, mask=mask, is_causal=True))
