"""LassoNet input-feature selection (Lemhadri et al., 2021), with the ``lassonet`` package.

LassoNet adds a linear skip connection to a one-hidden-layer network and constrains every input's first-layer
weights by its skip weight (``|W_j| <= M |theta_j|``, the hierarchy), so a lasso path on the skip weights drops
whole input features. Here the package trains that path on the task's training inputs (flattened) and labels, with
a hidden layer as wide as the model's first layer, the penalty growing from ``LAMBDA_START`` by ``PATH_MULTIPLIER``
(warm-started from point to point), until at most ``k = ceil(n * 0.25 ** strength)`` of the ``n`` inputs remain (a
quarter at strength 1; all at 0). The ``k`` features that survived the most path points are kept (ties broken by
their skip weights' norm one point earlier). As the paper judges a selection by a downstream network, the user's
own model is then trained for ``LearnedSettings.epochs`` with the other inputs' first-layer columns held at exactly
zero. It applies to models whose first compressible layer is a ``Linear`` over the flattened input
(LeNet-300-100); ``Learned.statistics["lassonet:selected"]`` is the kept-feature mask.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from core.errors import UsageError
from methods.layer_kinds import owner_of
from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target, penalised_training
from methods.streams import head

SAMPLES = 20_000
"""Most training samples the path is fitted on."""
KEPT_AT_STRENGTH_1 = 0.25
"""Fraction of the inputs kept at strength 1 (``0.25 ** strength`` in general)."""
M = 10.0
"""The hierarchy coefficient (the paper's default)."""
LAMBDA_START = 0.01
"""First penalty of the path."""
PATH_MULTIPLIER = 1.1
"""Growth of the penalty along the path proper (the package's default, 1.02, is for small feature counts)."""
DENSE_EPOCHS, PATH_EPOCHS = 10, 1
"""Most passes of the dense start and of each path point (both stop early on the validation loss)."""


class _Enough(Exception):
    """Raised from the path's callback once few enough features remain."""


def _first_layer(model: nn.Module, target: Target, features: int) -> tuple[str, nn.Linear | None, str | None]:
    """The first compressible layer, if it is a Linear over the ``features`` flattened inputs, else why not."""
    if not target.keys:
        return "", None, "learned method 'lassonet' needs a compressible first layer"
    owner, _ = owner_of(model, target.keys[0])
    name = target.keys[0].rpartition(".")[0]
    if not isinstance(owner, nn.Linear) or owner.in_features != features:
        return name, None, (f"learned method 'lassonet' selects input features of a model whose first layer is a "
                            f"Linear over the {features} flattened inputs; its first layer {name!r} is a "
                            f"{type(owner).__name__}")
    return name, owner, None


def _classification(target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    sample = head(target.train, SAMPLES)
    return sample.tensors[0].flatten(1).float(), sample.tensors[1]


def _path(inputs: torch.Tensor, labels: torch.Tensor, hidden: int, seed: int, device: torch.device | str,
          batch_size: int, penalties: Iterator[float], callback: Callable[[Any, list], None]) -> None:
    """Runs the package's path over ``penalties`` until ``callback`` raises :class:`_Enough`."""
    from lassonet import LassoNetClassifier

    estimator = LassoNetClassifier(
        hidden_dims=(hidden,), M=M, n_iters=(DENSE_EPOCHS, PATH_EPOCHS), patience=(3, 2), batch_size=batch_size,
        val_size=0.1, device=torch.device(device), verbose=0, random_state=seed, torch_seed=seed,
    )
    try:
        estimator.path(inputs.numpy(), labels.numpy(), lambda_seq=penalties, callback=callback,
                       disable_lambda_warning=True)
    except _Enough:
        pass


def _geometric(start: float, factor: float) -> Iterator[float]:
    value = start
    while True:
        yield value
        value *= factor


def select_features(inputs: torch.Tensor, labels: torch.Tensor, hidden: int, k: int, seed: int,
                    device: torch.device | str = "cpu", batch_size: int = 64) -> torch.Tensor:
    """The ``k`` input features LassoNet's path keeps longest (bool mask over the columns of ``inputs``)."""
    features = inputs.shape[1]
    if k >= features:
        return torch.ones(features, dtype=torch.bool)
    survived = torch.zeros(features)
    norms = {"last": torch.zeros(features), "before": torch.zeros(features)}

    def follow(estimator: Any, history: list) -> None:
        norms["before"] = norms["last"]
        norms["last"] = estimator.model.skip.weight.detach().norm(dim=0).cpu()
        selected = torch.as_tensor(history[-1].selected).cpu().bool()
        survived.add_(selected.float())
        if int(selected.sum()) <= k:
            raise _Enough

    _path(inputs, labels, hidden, seed, device, batch_size, _geometric(LAMBDA_START, PATH_MULTIPLIER), follow)
    rank = survived * (1 + norms["before"].max()) + norms["before"]  # survival first, then the earlier norm
    mask = torch.zeros(features, dtype=torch.bool)
    mask[torch.argsort(rank, descending=True, stable=True)[:k]] = True
    return mask


class LassoNet(LearnedMethod):
    """LassoNet's hierarchical lasso path picks the input features; the model is retrained on them."""

    description: ClassVar[str] = "LassoNet input-feature selection (Lemhadri et al. 2021): inputs a lasso path keeps"

    def applies_to(self, model: nn.Module, target: Target) -> str | None:
        """Why the method cannot select this model's inputs (its first layer is not a Linear over the flattened
        input, or the targets are not class labels), or None."""
        inputs, labels = _classification(target)
        if labels.dtype.is_floating_point or labels.dim() != 1:
            return "learned method 'lassonet' selects features for classification (one integer label per sample)"
        return _first_layer(model, target, inputs.shape[1])[2]

    def fit(self, model: nn.Module, target: Target, settings: LearnedSettings) -> Learned:
        """Selects the inputs, zeroes the others' first-layer columns and retrains the model with them held at 0."""
        start = time.perf_counter()
        refusal = self.applies_to(model, target)
        if refusal is not None:
            raise UsageError(refusal)
        inputs, labels = _classification(target)
        _, layer, _ = _first_layer(model, target, inputs.shape[1])
        assert layer is not None
        k = max(1, math.ceil(inputs.shape[1] * KEPT_AT_STRENGTH_1 ** settings.strength))
        mask = select_features(inputs, labels, layer.out_features, k, settings.seed, target.device,
                               settings.batch_size)
        model.to(target.device)
        dropped = (~mask).to(target.device)

        def hold() -> None:
            with torch.no_grad():
                layer.weight[:, dropped] = 0.0

        hold()
        penalised_training(model, target, settings, lambda _: 0.0, after_step=lambda _: hold())
        model.to("cpu")
        return Learned(time.perf_counter() - start, {"lassonet:selected": mask.float()})
