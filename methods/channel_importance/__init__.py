"""Channel-importance criteria of structured pruning (which channels of a group go first), by name.

Each criterion builds one of Torch-Pruning's :class:`~torch_pruning.importance.Importance` scorers,
without a normaliser so that scores keep their raw order:

* ``l1``: mean group L1 magnitude of conv/linear weights and BatchNorm scales (the default);
* ``l2``: the same with squared (L2) magnitudes;
* ``bn``: mean ``|gamma|`` of the group's BatchNorm layers (network slimming, Liu et al., 2017);
* ``taylor``: first-order Taylor saliency ``|w * dL/dw|`` of the group's conv/linear weights
  (Molchanov et al., 2019), from gradients :mod:`methods.structured` computes on calibration data;
* ``index``: the channel's position, the first channels kept: a once-for-all supernet
  (:mod:`methods.learned.ofa`) orders every group's channels by importance while it trains, so its
  sub-networks are its first channels (on another model this keeps an arbitrary subset).

A scorer that finds nothing to score in a group (``bn`` without an affine BatchNorm) falls back to
``l1`` there (:mod:`methods.structured`). A new criterion is one ``CHANNEL_IMPORTANCES.register`` line
below (plus one module for an ``Importance`` subclass Torch-Pruning lacks);
``tests/test_channel_importance_conformance.py`` checks every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch_pruning as tp

from core.registry import Registry


@dataclass(frozen=True)
class ChannelImportance:
    """One channel criterion: how to build its scorer, and whether it needs calibration data."""

    scorer: Callable[[], tp.importance.Importance]
    """Builds the scorer: called on a full channel group, it returns one score per channel (higher is kept)."""
    needs_data: bool = False
    """True when the scorer reads ``.grad``: the cross-entropy gradient on calibration data ``(inputs, labels)``."""


class IndexImportance(tp.importance.Importance):
    """Scores each channel of a full group by minus its index, so the last channels go first."""

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        return -torch.arange(len(group[0].root_idxs), dtype=torch.float32)


CHANNEL_IMPORTANCES: Registry[ChannelImportance] = Registry("channel importance")
"""Structured pruning criteria by name (a policy's ``channel_importance``)."""
_MEAN = {"group_reduction": "mean", "normalizer": None}
CHANNEL_IMPORTANCES.register("l1", ChannelImportance(partial(tp.importance.GroupMagnitudeImportance, p=1, **_MEAN)))
CHANNEL_IMPORTANCES.register("l2", ChannelImportance(partial(tp.importance.GroupMagnitudeImportance, p=2, **_MEAN)))
CHANNEL_IMPORTANCES.register("bn", ChannelImportance(partial(tp.importance.BNScaleImportance, **_MEAN)))
CHANNEL_IMPORTANCES.register(
    "taylor", ChannelImportance(partial(tp.importance.GroupTaylorImportance, **_MEAN), needs_data=True)
)
CHANNEL_IMPORTANCES.register("index", ChannelImportance(IndexImportance))
FALLBACK = "l1"
"""The criterion used in a group where another one finds nothing to score."""


def check_channel_importance(name: str) -> ChannelImportance:
    """The criterion called ``name``: the check of a policy's or a config's ``channel_importance``.

    Raises:
        core.registry.UnknownEntryError: (a ``ValueError``) ``unknown channel importance 'x'; choose one of: l1, ...``.
    """
    return CHANNEL_IMPORTANCES.get(name)


__all__ = ["CHANNEL_IMPORTANCES", "FALLBACK", "ChannelImportance", "check_channel_importance"]
