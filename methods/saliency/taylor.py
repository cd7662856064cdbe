"""``taylor``: first-order Taylor expansion of the loss (Molchanov et al., 2019), ``(g_i w_i)^2``.

``g`` is the gradient of the mean cross-entropy over the calibration data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import TensorDataset

from methods.objective import task_loss
from methods.saliency.base import Saliency


def mean_gradient(
    model: nn.Module, weights: Mapping[str, nn.Parameter], data: TensorDataset, batch_size: int
) -> dict[str, torch.Tensor]:
    """Gradient of the mean eval-mode cross-entropy over ``data`` for each of ``weights``.

    Every ``.grad`` of ``model`` is cleared afterwards; its mode and the weights' ``requires_grad`` are restored.
    """
    was_training, frozen = model.training, [w for w in weights.values() if not w.requires_grad]
    model.eval()
    grads = {key: torch.zeros_like(weight) for key, weight in weights.items()}
    inputs, labels = data.tensors
    try:
        for weight in frozen:
            weight.requires_grad_(True)
        for start in range(0, len(labels), batch_size):
            model.zero_grad(set_to_none=True)
            x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
            with torch.enable_grad():
                (task_loss(model(x), y) * len(y) / len(labels)).backward()
            for key, weight in weights.items():
                grads[key] += weight.grad.detach()
    finally:
        model.zero_grad(set_to_none=True)
        for weight in frozen:
            weight.requires_grad_(False)
        model.train(was_training)
    return grads


class FirstOrderTaylor(Saliency):
    """``(g_i w_i)^2``: the squared first-order change of the loss when the weight is removed."""

    needs_data = True

    def scores(
        self, model: nn.Module, weights: Mapping[str, nn.Parameter], data: TensorDataset | None, batch_size: int
    ) -> dict[str, torch.Tensor]:
        """``(g w)^2`` per weight, ``g`` from :func:`mean_gradient`."""
        grads = mean_gradient(model, weights, data, batch_size)
        return {key: (grads[key] * weight.detach()) ** 2 for key, weight in weights.items()}
