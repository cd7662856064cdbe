"""Saliency criteria for fine-grained pruning: which weights matter least.

* ``magnitude``: ``|w|`` (Han et al.).
* ``obd``: Optimal Brain Damage (LeCun et al., 1990), ``h_ii w_i^2 / 2`` with ``h_ii`` the diagonal of
  the loss Hessian. The diagonal is that of the generalised Gauss-Newton matrix
  ``sum_n J_n^T H_n J_n`` (``J_n``: Jacobian of the outputs, ``H_n``: Hessian of the loss in the
  outputs), computed exactly from per-sample Jacobians. It is the Hessian itself when the
  network is linear in the weights, and LeCun's own positive approximation otherwise.
* ``taylor``: first-order Taylor expansion of the loss (Molchanov et al., 2019), ``(g_i w_i)^2``
  with ``g`` the gradient over the calibration data.

Lower scores are pruned first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import TensorDataset

from core.policy import SALIENCIES

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


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": model.get_submodule(name).weight for name in names}


def hessian_diagonal(
    model: nn.Module,
    names: Sequence[str],
    inputs: torch.Tensor,
    output_hessian: OutputHessian = cross_entropy_hessian,
) -> dict[str, torch.Tensor]:
    """Diagonal of the Gauss-Newton matrix of the mean loss over ``inputs``, for the named layers' weights.

    Args:
        model: the network (evaluated in eval mode, not modified).
        names: layers whose weights are scored.
        inputs: a batch of inputs.
        output_hessian: the loss's Hessian in the model outputs.

    Returns:
        ``{layer name: tensor of the weight's shape}``.
    """
    was_training = model.training
    model.eval()
    weights = {key: w.detach() for key, w in _weights(model, names).items()}
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
    return {name: total[f"{name}.weight"] / len(inputs) for name in names}


def _mean_gradient(
    model: nn.Module, names: Sequence[str], data: TensorDataset, batch_size: int
) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    weights = _weights(model, names)
    grads = {name: torch.zeros_like(w) for name, w in zip(names, weights.values(), strict=True)}
    inputs, labels = data.tensors
    try:
        for start in range(0, len(labels), batch_size):
            model.zero_grad(set_to_none=True)
            x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
            (F.cross_entropy(model(x), y, reduction="sum") / len(labels)).backward()
            for name, w in zip(names, weights.values(), strict=True):
                grads[name] += w.grad.detach()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return grads


def saliency_scores(
    model: nn.Module,
    names: Sequence[str],
    criterion: str,
    data: TensorDataset | None = None,
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Per-weight importance of the named layers under ``criterion``; lower is pruned first.

    Args:
        model: the network; its weights are read, not changed.
        names: Linear/Conv2d module names.
        criterion: ``magnitude``, ``obd`` or ``taylor``.
        data: (inputs, labels) calibration data, needed by ``obd`` and ``taylor``.
        batch_size: batch size of the gradient passes.

    Raises:
        ValueError: for an unknown criterion, or no data for a data-driven one.
    """
    if criterion not in SALIENCIES:
        raise ValueError(f"unknown saliency {criterion!r}; choose one of {SALIENCIES}")
    weights = {name: model.get_submodule(name).weight.detach() for name in names}
    if criterion == "magnitude":
        return {name: w.abs() for name, w in weights.items()}
    if data is None or len(data) == 0:
        raise ValueError(f"the {criterion} saliency needs calibration data")
    if criterion == "obd":
        diag = hessian_diagonal(model, names, data.tensors[0])
        return {name: 0.5 * diag[name] * weights[name] ** 2 for name in names}
    grads = _mean_gradient(model, names, data, batch_size)
    return {name: (grads[name] * weights[name]) ** 2 for name in names}
