"""Channel-importance criteria of structured pruning (which channels of a group go first), by name.

Each criterion builds one of Torch-Pruning's :class:`~torch_pruning.importance.Importance` scorers,
without a normaliser so that scores keep their raw order:

* ``l1``: mean group L1 magnitude of conv/linear weights and BatchNorm scales (the default);
* ``l2``: the same with squared (L2) magnitudes;
* ``bn``: mean ``|gamma|`` of the group's BatchNorm layers (network slimming, Liu et al., 2017);
* ``taylor``: first-order Taylor saliency ``|w * dL/dw|`` of the group's conv/linear weights
  (Molchanov et al., 2019), from gradients :mod:`methods.structured` computes on calibration data.

A scorer that finds nothing to score in a group (``bn`` without an affine BatchNorm) falls back to
``l1`` there (:mod:`methods.structured`). A new criterion is one ``CHANNEL_IMPORTANCES.register`` line
below (plus one module for an ``Importance`` subclass Torch-Pruning lacks);
``tests/test_channel_importance_conformance.py`` checks every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch_pruning as tp

from core.registry import Registry


@dataclass(frozen=True)
class ChannelImportance:
    """One channel criterion: how to build its scorer, and whether it needs calibration data."""

    scorer: Callable[[], tp.importance.Importance]
    """Builds the scorer: called on a full channel group, it returns one score per channel (higher is kept)."""
    needs_data: bool = False
    """True when the scorer reads ``.grad``: the cross-entropy gradient on calibration data ``(inputs, labels)``."""


CHANNEL_IMPORTANCES: Registry[ChannelImportance] = Registry("channel importance")
"""Structured pruning criteria by name (a policy's ``channel_importance``)."""
_MEAN = {"group_reduction": "mean", "normalizer": None}
CHANNEL_IMPORTANCES.register("l1", ChannelImportance(partial(tp.importance.GroupMagnitudeImportance, p=1, **_MEAN)))
CHANNEL_IMPORTANCES.register("l2", ChannelImportance(partial(tp.importance.GroupMagnitudeImportance, p=2, **_MEAN)))
CHANNEL_IMPORTANCES.register("bn", ChannelImportance(partial(tp.importance.BNScaleImportance, **_MEAN)))
CHANNEL_IMPORTANCES.register(
    "taylor", ChannelImportance(partial(tp.importance.GroupTaylorImportance, **_MEAN), needs_data=True)
)
FALLBACK = "l1"
"""The criterion used in a group where another one finds nothing to score."""


def check_channel_importance(name: str) -> ChannelImportance:
    """The criterion called ``name``: the check of a policy's or a config's ``channel_importance``.

    Raises:
        core.registry.UnknownEntryError: (a ``ValueError``) ``unknown channel importance 'x'; choose one of: l1, ...``.
    """
    return CHANNEL_IMPORTANCES.get(name)


__all__ = ["CHANNEL_IMPORTANCES", "FALLBACK", "ChannelImportance", "check_channel_importance"]
