"""``magnitude``: ``|w|`` (Han et al., 2015)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import TensorDataset

from methods.saliency.base import Saliency


class Magnitude(Saliency):
    """The weight's absolute value; needs no data."""

    def scores(
        self, model: nn.Module, weights: Mapping[str, nn.Parameter], data: TensorDataset | None, batch_size: int
    ) -> dict[str, torch.Tensor]:
        """``|w|`` per weight."""
        return {key: weight.detach().abs() for key, weight in weights.items()}
