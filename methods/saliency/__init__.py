"""Saliency criteria for fine-grained pruning (which weights matter least), by name.

* ``magnitude``: ``|w|`` (Han et al.), :mod:`methods.saliency.magnitude`;
* ``obd``: Optimal Brain Damage, ``h_ii w_i^2 / 2`` (LeCun et al., 1990), :mod:`methods.saliency.obd`;
* ``taylor``: first-order Taylor, ``(g_i w_i)^2`` (Molchanov et al., 2019), :mod:`methods.saliency.taylor`;
* ``net_trim``: Net-Trim (Aghasi et al., 2016), each layer's L1 tolerance path on its calibration inputs, then a
  least-squares refit of the kept weights to the layer's outputs, :mod:`methods.saliency.net_trim`.

Lower scores are pruned first. A new criterion is one module with a :class:`Saliency` subclass plus
one ``SALIENCIES.register`` line below; ``tests/test_saliency_conformance.py`` checks every entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.registry import Registry
from methods.layer_kinds import parameter_name
from methods.saliency.base import Saliency
from methods.saliency.cache import ScoreCache
from methods.saliency.magnitude import Magnitude
from methods.saliency.net_trim import NetTrim
from methods.saliency.obd import OptimalBrainDamage
from methods.saliency.taylor import FirstOrderTaylor

SALIENCIES: Registry[Saliency] = Registry("saliency")
"""Fine-grained pruning criteria by name (a policy's ``saliency``)."""
SALIENCIES.register("magnitude", Magnitude())
SALIENCIES.register("obd", OptimalBrainDamage())
SALIENCIES.register("taylor", FirstOrderTaylor())
SALIENCIES.register("net_trim", NetTrim())


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
    cache: ScoreCache | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight importance of the named weights under ``criterion``; lower is pruned first.

    Args:
        model: the network; its weights are read, not changed.
        names: parameter names of compressible weights (``rnn.weight_hh_l0``), or layer names standing for their
            ``weight`` (see :func:`methods.layer_kinds.parameter_name`); the scores are keyed as given.
        criterion: a name in :data:`SALIENCIES`.
        data: (inputs, labels) calibration data, needed by the data-driven criteria.
        batch_size: batch size of the gradient passes.
        cache: where a data-driven criterion's scores are kept for the next call on the same model and data.

    Raises:
        core.registry.UnknownEntryError: for an unknown criterion (a ``ValueError``).
        ValueError: for no data with a data-driven criterion.
    """
    saliency = check_saliency(criterion)
    if saliency.needs_data and (data is None or len(data) == 0):
        raise ValueError(f"the {criterion} saliency needs calibration data")
    keys = {name: parameter_name(model, name) for name in names}
    cached = cache is not None and saliency.needs_data
    digest = ScoreCache.key(model, list(keys.values()), criterion, data) if cached else None
    scores = None if digest is None else cache.get(digest)
    if scores is None:
        weights = {key: model.get_parameter(key) for key in keys.values()}
        scores = saliency.scores(model, weights, data, batch_size)
        if digest is not None:
            cache.put(digest, scores)
    return {name: scores[key] for name, key in keys.items()}


def saliency_refit(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    criterion: str,
    data: TensorDataset | None = None,
    batch_size: int = 128,
) -> None:
    """The criterion's own setting of the kept weights once ``masks`` are chosen (Net-Trim's least-squares refit;
    nothing for most), on the unpruned ``model``; masks keyed as :func:`saliency_scores`'s names."""
    saliency = check_saliency(criterion)
    keyed = {parameter_name(model, name): mask for name, mask in masks.items()}
    saliency.refit(model, keyed, data, batch_size)



__all__ = ["SALIENCIES", "Saliency", "ScoreCache", "check_saliency", "saliency_refit", "saliency_scores"]
