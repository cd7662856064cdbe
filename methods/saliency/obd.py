"""``obd``: Optimal Brain Damage (LeCun et al., 1990), ``h_ii w_i^2 / 2``.

``h_ii`` is the diagonal of the loss Hessian, here that of the generalised Gauss-Newton matrix
``sum_n J_n^T H_n J_n`` (``J_n``: Jacobian of the outputs, ``H_n``: Hessian of the loss in the
outputs), computed exactly from per-sample Jacobians. It is the Hessian itself when the network is
linear in the weights, and LeCun's own positive approximation otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import TensorDataset

from methods.saliency.base import Saliency

OutputHessian = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of outputs ``(n, k)`` to the loss Hessian in the outputs, ``(n, k, k)``."""

_JACOBIAN_FLOATS = 40_000_000
"""Per-sample Jacobian entries held at once (about 160 MB); sets the chunk size."""


def cross_entropy_hessian(logits: torch.Tensor) -> torch.Tensor:
    """Hessian of softmax cross-entropy in the logits: ``diag(p) - p p^T`` per sample."""
    p = torch.softmax(logits, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def squared_error_hessian(outputs: torch.Tensor) -> torch.Tensor:
    """Hessian of ``||f - y||^2 / 2`` in the outputs: the identity per sample."""
    n, k = outputs.shape
    return torch.eye(k, dtype=outputs.dtype).expand(n, k, k)


def hessian_diagonal(
    model: nn.Module,
    keys: Sequence[str],
    inputs: torch.Tensor,
    output_hessian: OutputHessian = cross_entropy_hessian,
) -> dict[str, torch.Tensor]:
    """Diagonal of the Gauss-Newton matrix of the mean loss over ``inputs``, for the named parameters.

    Args:
        model: the network (evaluated in eval mode, not modified).
        keys: parameter names (``features.0.weight``).
        inputs: a batch of inputs.
        output_hessian: the loss's Hessian in the model outputs.

    Returns:
        ``{parameter name: tensor of its shape}``.
    """
    was_training = model.training
    model.eval()
    weights = {key: model.get_parameter(key).detach() for key in keys}
    others = {k: v.detach() for k, v in model.named_parameters() if k not in weights}
    buffers = dict(model.named_buffers())

    def outputs(trainable: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, ({**others, **trainable}, buffers), (x.unsqueeze(0),)).squeeze(0)

    with torch.no_grad():
        width = int(outputs(weights, inputs[0]).numel())
    count = sum(w.numel() for w in weights.values())
    chunk = max(1, _JACOBIAN_FLOATS // max(1, count * width))
    total = {key: torch.zeros_like(w) for key, w in weights.items()}
    per_sample_jacobian = vmap(jacrev(outputs), in_dims=(None, 0))
    try:
        for start in range(0, len(inputs), chunk):
            batch = inputs[start : start + chunk]
            with torch.no_grad():
                hess = output_hessian(vmap(outputs, in_dims=(None, 0))(weights, batch))
            jac = per_sample_jacobian(weights, batch)
            for key, j in jac.items():
                flat = j.reshape(j.shape[0], width, -1)  # (n, k, params)
                total[key] += torch.einsum("nkp,nkl,nlp->p", flat, hess, flat).reshape(total[key].shape)
    finally:
        model.train(was_training)
    return {key: value / len(inputs) for key, value in total.items()}


class OptimalBrainDamage(Saliency):
    """``h_ii w_i^2 / 2`` with the Gauss-Newton diagonal of the cross-entropy loss."""

    needs_data = True

    def scores(
        self, model: nn.Module, weights: Mapping[str, nn.Parameter], data: TensorDataset | None, batch_size: int
    ) -> dict[str, torch.Tensor]:
        """OBD saliency per weight; ``batch_size`` is unused (the Jacobians are chunked by memory)."""
        diagonal = hessian_diagonal(model, list(weights), data.tensors[0])
        return {key: 0.5 * diagonal[key] * weight.detach() ** 2 for key, weight in weights.items()}
