"""Saliency criteria for fine-grained pruning (which weights matter least), by name.

* ``magnitude``: ``|w|`` (Han et al.), :mod:`methods.saliency.magnitude`;
* ``obd``: Optimal Brain Damage, ``h_ii w_i^2 / 2`` (LeCun et al., 1990), :mod:`methods.saliency.obd`;
* ``taylor``: first-order Taylor, ``(g_i w_i)^2`` (Molchanov et al., 2019), :mod:`methods.saliency.taylor`.

Lower scores are pruned first. A new criterion is one module with a :class:`Saliency` subclass plus
one ``SALIENCIES.register`` line below; ``tests/test_saliency_conformance.py`` checks every entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.registry import Registry
from methods.layer_kinds import parameter_name
from methods.saliency.base import Saliency
from methods.saliency.magnitude import Magnitude
from methods.saliency.obd import OptimalBrainDamage
from methods.saliency.taylor import FirstOrderTaylor

SALIENCIES: Registry[Saliency] = Registry("saliency")
"""Fine-grained pruning criteria by name (a policy's ``saliency``)."""
SALIENCIES.register("magnitude", Magnitude())
SALIENCIES.register("obd", OptimalBrainDamage())
SALIENCIES.register("taylor", FirstOrderTaylor())


def check_saliency(name: str) -> Saliency:
    """The criterion called ``name``: the check of a policy's or a config's ``saliency``.

    Raises:
        core.registry.UnknownEntryError: (a ``ValueError``) ``unknown saliency 'x'; choose one of: magnitude, ...``.
    """
    return SALIENCIES.get(name)


def saliency_scores(
    model: nn.Module,
    names: Sequence[str],
    criterion: str,
    data: TensorDataset | None = None,
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Per-weight importance of the named weights under ``criterion``; lower is pruned first.

    Args:
        model: the network; its weights are read, not changed.
        names: parameter names of compressible weights (``rnn.weight_hh_l0``), or layer names standing for their
            ``weight`` (see :func:`methods.layer_kinds.parameter_name`); the scores are keyed as given.
        criterion: a name in :data:`SALIENCIES`.
        data: (inputs, labels) calibration data, needed by the data-driven criteria.
        batch_size: batch size of the gradient passes.

    Raises:
        core.registry.UnknownEntryError: for an unknown criterion (a ``ValueError``).
        ValueError: for no data with a data-driven criterion.
    """
    saliency = check_saliency(criterion)
    if saliency.needs_data and (data is None or len(data) == 0):
        raise ValueError(f"the {criterion} saliency needs calibration data")
    keys = {name: parameter_name(model, name) for name in names}
    weights = {key: model.get_parameter(key) for key in keys.values()}
    scores = saliency.scores(model, weights, data, batch_size)
    return {name: scores[key] for name, key in keys.items()}



__all__ = ["SALIENCIES", "Saliency", "check_saliency", "saliency_scores"]
