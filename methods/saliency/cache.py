"""A small cache of data-driven saliency scores, keyed by the model's state, the data and the criterion.

A search scores many candidates cut from the same trained model: a criterion that needs data (OBD's Jacobians,
Net-Trim's tolerance path) then gives the same scores every time, and the cache computes them once. The key is a
digest of every parameter and buffer, the calibration data and the scored names, so a changed model (a channel
pruned, a fine-tuned round) is scored afresh.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _digest_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


class ScoreCache:
    """The scores of the last ``size`` (model state, data, criterion, names) combinations."""

    def __init__(self, size: int = 4) -> None:
        """Args: size: entries kept, least recently used dropped first."""
        self._size = size
        self._entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    @staticmethod
    def key(model: nn.Module, names: Sequence[str], criterion: str, data: TensorDataset | None) -> str:
        """A digest of everything the scores depend on."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"{criterion}|{'|'.join(names)}|{type(model).__qualname__}".encode())
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            _digest_tensor(digest, name, tensor)
        for number, tensor in enumerate(() if data is None else data.tensors):
            _digest_tensor(digest, f"data{number}", tensor)
        return digest.hexdigest()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """Copies of the scores stored under ``key``, or ``None``."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return {name: score.clone() for name, score in found.items()}

    def put(self, key: str, scores: dict[str, torch.Tensor]) -> None:
        """Stores copies of ``scores`` under ``key``."""
        self._entries[key] = {name: score.detach().clone() for name, score in scores.items()}
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
