"""What a fine-grained pruning saliency is: a per-weight importance score, lower pruned first."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Saliency(ABC):
    """One pruning criterion; register an instance in :data:`methods.saliency.SALIENCIES`.

    Scores are keyed by parameter name (``features.0.weight``), so a layer with several compressible
    weights (an LSTM's gate matrices) is scored like several layers.
    """

    needs_data: ClassVar[bool] = False
    """True when :meth:`scores` needs calibration data (inputs, labels)."""
    vanishes_at_zero: ClassVar[bool] = True
    """True when a weight that is exactly zero scores 0, the lowest score (the criterion scales with ``|w|``)."""

    @abstractmethod
    def scores(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Parameter],
        data: TensorDataset | None,
        batch_size: int,
    ) -> dict[str, torch.Tensor]:
        """Per-weight importance: finite, ``>= 0``, one tensor of each weight's shape, keyed as ``weights``.

        Args:
            model: the network; its weights, mode and gradients are left as they were.
            weights: the scored parameters of ``model``, by parameter name.
            data: ``(inputs, labels)`` calibration data; never ``None`` or empty when :attr:`needs_data`.
            batch_size: batch size of gradient passes.
        """

    def refit(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor], data: TensorDataset | None, batch_size: int
    ) -> None:
        """Sets the kept weights of ``model`` once the masks are chosen (the masked ones to zero); by default
        nothing: most criteria only choose which weights go.

        Args:
            model: the network, unpruned; changed in place.
            masks: keep-mask per scored parameter name.
            data: ``(inputs, labels)`` calibration data, as given to :meth:`scores`.
            batch_size: batch size of forward passes.
        """
        return None
