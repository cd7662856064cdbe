"""``net_trim``: Net-Trim (Aghasi et al., 2016), layer-wise convex pruning that keeps each layer's outputs.

For one layer with inputs ``X`` (calibration activations, im2col patches for a convolution, a column of ones for
the bias) and weights ``W0``, Net-Trim asks for the sparsest ``W`` whose outputs stay within a tolerance of
``X W0``: ``min ||W||_1`` s.t. ``||X W - X W0|| <= eps``. Its Lagrangian form, ``1/2 ||X (W - W0)||^2 / n +
lambda ||W||_1`` (the bias unpenalised), is solved by ADMM with the Gram matrix ``G = X^T X / n`` over a path of
``lambda`` from the value at which every weight is zero down by factors of 2 (a larger ``lambda`` is a larger
tolerance). A weight's score is the number of path points at which it is non-zero, ties broken by its
``|w| sqrt(G_ii)``: pruning a layer to sparsity ``s`` keeps the weights that survive the largest tolerance,
so the searched per-layer sparsity picks a point of the layer's tolerance path.

After the mask is chosen, :meth:`NetTrim.refit` solves the program's last step, the least-squares fit of the
kept weights (and the bias) to the layer's original outputs, ``min ||X W_S - X W0||`` column by column
(a direct solve per column): the pruned layer reproduces its outputs as closely as its support allows.
Inputs come from the unpruned network (Net-Trim's parallel scheme), targets are the pre-activations (the
convex relaxation for any activation). Linear layers and ungrouped 1-D/2-D convolutions are trimmed; other
weights (recurrent, attention, embedding, grouped or transposed convolutions) fall back to ``|w|`` and are not
refitted. Scores are cached per model state by :func:`methods.saliency.saliency_scores`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from methods.saliency.base import Saliency

PATH_POINTS = 12
"""Points of the ``lambda`` path, each half the one before."""
ADMM_STEPS = 20
"""ADMM iterations per path point (warm-started from the point before)."""
BATCH_ROWS = 4096
"""Most rows of ``X`` one calibration batch adds (evenly spaced output positions of a convolution's batch), which
bounds the Gram matrix's cost on large feature maps."""
RIDGE = 1e-6
"""Relative ridge added to the Gram matrix (times its mean diagonal), so that it is positive definite."""


def _trimmable(module: nn.Module, key: str) -> bool:
    """True for weights Net-Trim handles: a Linear's, or an ungrouped Conv1d/Conv2d's ``weight``."""
    if key.rsplit(".", 1)[-1] != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return type(module) in (nn.Conv1d, nn.Conv2d) and module.groups == 1 and isinstance(module.padding, tuple)


def _columns(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as rows of ``X`` (one per output position), without the bias column."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    if isinstance(module, nn.Conv1d):
        inputs = inputs.unsqueeze(2)
        kernel, dilation = (1, *module.kernel_size), (1, *module.dilation)
        padding, stride = (0, *module.padding), (1, *module.stride)
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    if module.padding_mode != "zeros" and any(padding):
        pad = [p for p in reversed(padding) for _ in range(2)]
        inputs, padding = F.pad(inputs, pad, mode=module.padding_mode), (0,) * len(padding)
    patches = F.unfold(inputs, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k*k, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def gram_matrices(
    model: nn.Module, modules: Mapping[str, nn.Module], data: TensorDataset, batch_size: int
) -> dict[str, torch.Tensor]:
    """``G = X^T X / n`` (float64, the bias column last when the layer has one) of each module's inputs."""
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(key: str, module: nn.Module):
        def record(_: nn.Module, args: tuple, __: object) -> None:
            x = _columns(module, args[0].detach())
            x = x[:: -(-x.shape[0] // BATCH_ROWS)].to(torch.float64)
            if module.bias is not None:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            grams[key] = grams.get(key, 0) + x.T @ x
            rows[key] = rows.get(key, 0) + x.shape[0]
        return record

    handles = [module.register_forward_hook(hook(key, module)) for key, module in modules.items()]
    try:
        with _eval(model), torch.no_grad():
            inputs = data.tensors[0]
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {key: gram / rows[key] for key, gram in grams.items()}


def _stacked(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``W0`` as a ``(inputs [+ 1], outputs)`` float64 matrix (the bias as the last row)."""
    stacked = weight.detach().reshape(weight.shape[0], -1).T.to(torch.float64)
    if module.bias is not None:
        stacked = torch.cat([stacked, module.bias.detach().to(torch.float64)[None]], dim=0)
    return stacked


def _ridged(gram: torch.Tensor) -> torch.Tensor:
    return gram + RIDGE * float(gram.diagonal().mean().clamp(min=1e-12)) * torch.eye(gram.shape[0],
                                                                                    dtype=gram.dtype)


def path_scores(gram: torch.Tensor, stacked: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """Per weight of ``stacked`` (the bias row excluded): path points at which the lasso keeps it, plus a tie-break
    in ``[0, 0.5)`` by ``|w| sqrt(G_ii)``."""
    gram = _ridged(gram)
    penalised = stacked.shape[0] - int(has_bias)
    target = gram @ stacked
    lam = float(target[:penalised].abs().max())
    rho = float(gram.diagonal().mean())
    shifted = gram + rho * torch.eye(gram.shape[0], dtype=gram.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(shifted)).to(torch.float32)  # iterations in float32
    target = target.to(torch.float32)
    z = torch.zeros_like(target)
    u = torch.zeros_like(target)
    alive = torch.zeros(penalised, stacked.shape[1], dtype=torch.float64)
    for _ in range(PATH_POINTS):
        lam /= 2
        for _ in range(ADMM_STEPS):
            w = inverse @ (target + rho * (z - u))
            z = w + u
            z[:penalised] = torch.sign(z[:penalised]) * (z[:penalised].abs() - lam / rho).clamp(min=0)
            u = u + w - z
        alive += (z[:penalised] != 0).to(torch.float64)
    size = stacked[:penalised].abs() * gram.diagonal()[:penalised, None].clamp(min=0).sqrt()
    return alive + 0.5 * size / (float(size.max()) + 1e-30) * (1 - 1e-9)


def refit_columns(gram: torch.Tensor, stacked: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Least-squares fit of each column on its support, ``min (w - w0)^T G (w - w0)`` with the pruned entries at
    zero. Solved per column in the smaller of two equivalent forms: ``G_SS w_S = (G w0)_S`` on the kept set ``S``,
    or, with ``H = G^-1``, ``w = w0 - H_:P (H_PP)^-1 w0_P`` on the pruned set ``P`` (Optimal Brain Surgeon's
    update for removing several weights at once)."""
    gram = _ridged(gram)
    target = gram @ stacked
    inverse = None
    out = torch.zeros_like(stacked)
    for column in range(stacked.shape[1]):
        kept = support[:, column]
        index, pruned = torch.nonzero(kept).squeeze(1), torch.nonzero(~kept).squeeze(1)
        if pruned.numel() == 0:
            out[:, column] = stacked[:, column]
        elif pruned.numel() < index.numel():
            if inverse is None:
                inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram))
            w0 = stacked[:, column]
            step = torch.linalg.solve(inverse[pruned][:, pruned], w0[pruned])
            out[:, column] = torch.where(kept, w0 - inverse[:, pruned] @ step, 0.0)
        elif index.numel():
            out[index, column] = torch.linalg.solve(gram[index][:, index], target[index, column])
    return out


class NetTrim(Saliency):
    """Net-Trim's tolerance path as a score, and its least-squares refit of the kept weights (module docstring)."""

    needs_data = True
    vanishes_at_zero = False

    def scores(
        self, model: nn.Module, weights: Mapping[str, nn.Parameter], data: TensorDataset | None, batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Path scores of trimmable weights, ``|w|`` for the others."""
        modules = _modules(model, weights)
        grams = gram_matrices(model, modules, data, batch_size)
        out = {key: weight.detach().abs().clone() for key, weight in weights.items()}
        for key, module in modules.items():
            weight = weights[key]
            score = path_scores(grams[key], _stacked(module, weight), module.bias is not None)
            out[key] = score.T.reshape(weight.shape).to(weight.dtype)
        return out

    def refit(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor], data: TensorDataset | None, batch_size: int
    ) -> None:
        """Kept weights and biases of trimmable layers refitted to the layer's outputs before masking."""
        weights = {key: model.get_parameter(key) for key in masks}
        modules = _modules(model, weights)
        grams = gram_matrices(model, modules, data, batch_size)
        with torch.no_grad():
            for key, module in modules.items():
                weight, mask = weights[key], masks[key]
                stacked = _stacked(module, weight)
                support = mask.reshape(mask.shape[0], -1).T
                if module.bias is not None:
                    support = torch.cat([support, torch.ones(1, support.shape[1], dtype=torch.bool)], dim=0)
                fitted = refit_columns(grams[key], stacked, support)
                inputs = weight[0].numel()
                weight.copy_(fitted[:inputs].T.reshape(weight.shape).to(weight.dtype) * mask)
                if module.bias is not None:
                    module.bias.copy_(fitted[inputs].to(module.bias.dtype))


def _modules(model: nn.Module, weights: Mapping[str, nn.Parameter]) -> dict[str, nn.Module]:
    """The trimmable layers among ``weights``, by parameter name."""
    out = {}
    for key in weights:
        owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
        if _trimmable(owner, key):
            out[key] = owner
    return out
