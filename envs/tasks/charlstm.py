"""A character-level LSTM language model: embedding, one LSTM layer, a linear read-out per position.

Kept apart from ``models.py`` because each built-in task's weight cache is keyed by the source file
of its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from envs.tasks.text import ALPHABET

EMBEDDING = 32
"""Embedding width per character."""
HIDDEN = 256
"""LSTM hidden units."""


class CharLSTM(nn.Module):
    """``(N, T)`` character indices to ``(N, T, V)`` next-character logits."""

    def __init__(self, vocab: int = len(ALPHABET), embedding: int = EMBEDDING, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the next character at every position."""
        return self.head(self.rnn(self.embed(x))[0])
