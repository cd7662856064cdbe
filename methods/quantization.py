"""Per-output-channel linear (affine) weight quantization with 1-8 bit codes.

Channel = dim 0 of the weight. Statistics use kept weights only (mask True).
Each channel stores ``lo`` and ``step`` as float16; a kept weight ``w`` becomes
the code ``clamp(round((w - lo) / step), 0, 2**bits - 1)`` and is reconstructed
as ``lo + code * step`` in float32. ``lo`` is rounded *down* and ``step`` *up*
to float16 so the code range always covers ``[min, max]`` of the kept weights.
Pruned positions reconstruct to exactly ``+0.0``.

The arithmetic runs in single-threaded numpy on CPU: it is as fast as torch here
and, unlike torch's intra-op thread pool, does not stall when the cores are busy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FP32_BITS = 32
"""Same value as ``core.policy.FP32_BITS``; not imported so that ``methods`` never
pulls in the ``search`` package (whose ``__init__`` imports the whole search stack)."""
FP16_MAX = 65504.0
MIN_BITS = 1
MAX_BITS = 8

_BIG = np.float32(1e37)
"""Offset that pushes pruned weights out of the per-channel min/max."""


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes and per-channel parameters of one quantized weight tensor."""

    codes: np.ndarray
    """uint8 codes of the kept weights only, in row-major order of kept positions."""
    lo: np.ndarray
    """float16 per-channel offset, shape [C]."""
    step: np.ndarray
    """float16 per-channel step, shape [C]."""
    bits: int
    shape: tuple[int, ...]


def channel_count(shape: tuple[int, ...] | torch.Size) -> int:
    """Number of quantization channels (dim 0; a 0-d tensor is one channel)."""
    return int(shape[0]) if len(shape) else 1


def quantize(
    weight: torch.Tensor, mask: torch.Tensor, bits: int, *, positions: np.ndarray | None = None
) -> QuantizedWeight:
    """Quantize the kept weights to ``bits``-bit per-channel codes.

    Args:
        weight: Float weight tensor; channel = dim 0.
        mask: Bool tensor of the same shape, True = kept.
        bits: Code width, 1-8.
        positions: ``np.flatnonzero(mask)`` if the caller already has it (saves recomputing it).

    Returns:
        The codes of the kept weights and per-channel float16 ``lo``/``step``.
    """
    check_bits(bits)
    check_mask(weight, mask)
    flat_mask = _numpy_mask(mask).reshape(-1)
    lo, step, codes, _ = _quantize_dense(_numpy_weight(weight), flat_mask, bits)
    all_codes = codes.astype(np.uint8).reshape(-1)
    if positions is None and not flat_mask.all():
        positions = np.flatnonzero(flat_mask)
    kept_codes = all_codes if positions is None or positions.size == all_codes.size else all_codes.take(positions)
    return QuantizedWeight(codes=kept_codes, lo=lo, step=step, bits=bits, shape=tuple(weight.shape))


def dequantize(q: QuantizedWeight, mask: torch.Tensor, *, positions: np.ndarray | None = None) -> torch.Tensor:
    """Reconstruct the float32 weight from codes; pruned positions are 0.0.

    Args:
        q: Output of :func:`quantize`.
        mask: Bool keep-mask of shape ``q.shape``.
        positions: ``np.flatnonzero(mask)`` if the caller already has it (saves recomputing it).

    Raises:
        ValueError: If the mask or the arrays do not match ``q``'s shape.
    """
    check_bits(q.bits)
    shape = tuple(q.shape)
    if tuple(mask.shape) != shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool of shape {shape}, got {mask.dtype} {tuple(mask.shape)}")
    channels = channel_count(shape)
    if q.lo.shape != (channels,) or q.step.shape != (channels,):
        raise ValueError(f"lo and step must have shape ({channels},)")
    flat_mask = _numpy_mask(mask).reshape(-1)
    codes = np.asarray(q.codes, dtype=np.uint8)
    if codes.ndim != 1:
        raise ValueError("codes must be one-dimensional")
    if codes.size == flat_mask.size:
        if not flat_mask.all():
            raise ValueError(f"expected {np.count_nonzero(flat_mask)} codes, got {codes.size}")
        dense = codes
    else:
        if positions is None:
            positions = np.flatnonzero(flat_mask)
        if codes.size != positions.size:
            raise ValueError(f"expected {positions.size} codes, got {codes.size}")
        dense = np.zeros(flat_mask.size, dtype=np.uint8)
        dense[positions] = codes
    values = dense.astype(np.float32).reshape(channels, -1)
    kept = flat_mask.astype(np.float32).reshape(channels, -1)
    lo = q.lo.astype(np.float16).astype(np.float32)
    step = q.step.astype(np.float16).astype(np.float32)
    return torch.from_numpy(_reconstruct(values, lo, step, kept)).reshape(shape)


def quantize_dequantize(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then reconstruct in one vectorised pass (no gradient).

    Bit-identical to ``dequantize(quantize(weight, mask, bits), mask)``. With
    ``bits == 32`` the kept weights are returned unchanged as float32 and pruned
    positions are +0.0 (i.e. ``weight * mask``).
    """
    check_mask(weight, mask)
    if bits != FP32_BITS:
        check_bits(bits)
    flat_mask = _numpy_mask(mask).reshape(-1)
    w = _numpy_weight(weight)
    if bits == FP32_BITS:
        out = _masked(w.reshape(-1).copy(), flat_mask.astype(np.float32))
    else:
        lo, step, codes, kept = _quantize_dense(w, flat_mask, bits)
        out = _reconstruct(codes, lo.astype(np.float32), step.astype(np.float32), kept)
    return torch.from_numpy(out).reshape(weight.shape)


def fake_quantize(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
    """Differentiable quantize-dequantize for quantization-aware fine-tuning.

    The forward value equals :func:`quantize_dequantize` bit-exactly; the
    gradient is straight-through (identity) at kept positions and 0 at pruned ones.
    """
    check_mask(weight, mask)
    if bits != FP32_BITS:
        check_bits(bits)
    return _FakeQuantize.apply(weight, mask, bits)


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize forward, masked straight-through backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor, mask: torch.Tensor, bits: int
    ) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return quantize_dequantize(weight, mask, bits).to(device=weight.device, dtype=weight.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * mask.to(grad.dtype), None, None


def _quantize_dense(
    weight: np.ndarray, flat_mask: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel float16 lo/step, float32 codes [C, K] and the 0/1 float32 mask [C, K].

    Codes at pruned positions are meaningless (finite, in range).
    """
    levels = np.float32(2**bits - 1)
    channels = channel_count(weight.shape)
    w2 = weight.reshape(channels, -1)
    kept = flat_mask.astype(np.float32).reshape(channels, -1)
    if w2.size == 0:
        zeros = np.zeros(channels, dtype=np.float16)
        return zeros, zeros.copy(), np.zeros(w2.shape, dtype=np.float32), kept
    # Boolean selection is slow on random masks; push pruned weights out of range instead.
    penalty = (kept - np.float32(1.0)) * _BIG
    lo = (w2 - penalty).min(axis=1)
    hi = (w2 + penalty).max(axis=1)
    empty = lo > hi
    lo = np.where(empty, np.float32(0.0), np.clip(lo, -FP16_MAX, FP16_MAX)).astype(np.float32)
    lo_h = _fp16_round_down(lo)
    lo_f = lo_h.astype(np.float32)
    span = np.where(empty, np.float32(0.0), hi - lo_f).clip(0.0, FP16_MAX * levels).astype(np.float32)
    step_h = _fp16_round_up(span / levels)
    step_f = step_h.astype(np.float32)
    safe_step = np.where(step_f > 0, step_f, np.float32(np.inf))
    codes = w2 - lo_f[:, None]
    codes /= safe_step[:, None]
    np.rint(codes, out=codes)
    np.clip(codes, 0.0, levels, out=codes)
    return lo_h, step_h, codes, kept


def _reconstruct(codes: np.ndarray, lo: np.ndarray, step: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``lo + code * step`` in float32 where ``kept`` is 1, +0.0 elsewhere; all [C, K].

    Overwrites and returns ``codes``.
    """
    codes *= step[:, None]
    codes += lo[:, None]
    return _masked(codes, kept)


def _masked(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``values * kept`` in place, pruned positions normalised to +0.0 (``kept`` is 0/1 float32)."""
    values *= kept
    values += np.float32(0.0)
    return values


def _numpy_mask(mask: torch.Tensor) -> np.ndarray:
    """The bool mask as a numpy array (no copy for CPU tensors)."""
    return mask.detach().cpu().numpy()


def _numpy_weight(weight: torch.Tensor) -> np.ndarray:
    """The weight as a float32 numpy array (no copy for contiguous CPU float32 tensors)."""
    return weight.detach().cpu().to(torch.float32).numpy()


def _fp16_round_down(x: np.ndarray) -> np.ndarray:
    """Largest float16 <= x, for float32 x in the finite float16 range."""
    h = x.astype(np.float16)
    below = np.nextafter(h, np.float16(-FP16_MAX))
    return np.where(h.astype(np.float32) > x, below, h)


def _fp16_round_up(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x for float32 x >= 0, capped at the largest finite float16."""
    h = np.minimum(x, np.float32(FP16_MAX)).astype(np.float16)
    above = np.nextafter(h, np.float16(FP16_MAX))
    return np.where(h.astype(np.float32) < x, above, h)


def check_bits(bits: int) -> None:
    """Raise ValueError unless ``bits`` is a code width 1-8."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}-{MAX_BITS}, got {bits}")


def check_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ValueError unless ``mask`` is a bool tensor of weight's shape."""
    if mask.dtype != torch.bool or mask.shape != weight.shape:
        raise ValueError(f"mask must be bool of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
