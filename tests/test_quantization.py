"""Tests for per-output-channel linear weight quantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.quantization import (
    FP32_BITS,
    QuantizedWeight,
    dequantize,
    fake_quantize,
    quantize,
    quantize_dequantize,
)

_SHAPES = st.sampled_from([(1,), (5,), (3, 1), (4, 7), (6, 3, 3, 3), (2, 1, 1, 1), (9, 40)])


def _case(shape: tuple[int, ...], seed: int, density: float, offset: float, scale: float) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * scale + offset
    mask = torch.rand(shape, generator=generator) < density
    return weight, mask


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _channel_params(q: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """lo and step as float32 broadcastable against the weight."""
    view = (-1,) + (1,) * (len(q.shape) - 1)
    lo = torch.from_numpy(q.lo.astype(np.float32)).reshape(view)
    step = torch.from_numpy(q.step.astype(np.float32)).reshape(view)
    return lo, step


@given(
    shape=_SHAPES,
    seed=st.integers(0, 2**16),
    bits=st.integers(1, 8),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    offset=st.sampled_from([0.0, 0.3, -7.0, 1000.0]),
    scale=st.sampled_from([1e-6, 0.05, 1.0, 30.0]),
)
@settings(max_examples=300, deadline=None)
def test_fast_path_is_bit_identical_and_error_bounded(
    shape: tuple[int, ...], seed: int, bits: int, density: float, offset: float, scale: float
) -> None:
    weight, mask = _case(shape, seed, density, offset, scale)
    q = quantize(weight, mask, bits)
    restored = dequantize(q, mask)
    fast = quantize_dequantize(weight, mask, bits)
    assert _bits_equal(fast, restored)

    assert q.codes.dtype == np.uint8 and q.codes.shape == (int(mask.sum()),)
    assert int(q.codes.max(initial=0)) <= 2**bits - 1
    assert q.lo.dtype == np.float16 and q.step.dtype == np.float16
    assert q.lo.shape == q.step.shape == (shape[0],)
    assert q.bits == bits and q.shape == shape

    lo, step = _channel_params(q)
    lo, step = lo.expand(shape), step.expand(shape)
    error = (restored - weight).abs()[mask]
    slack = 1e-6 * (weight.abs()[mask] + lo.abs()[mask] + step[mask] * 2**bits)
    assert bool((error <= step[mask] / 2 + slack).all())
    assert bool((lo[mask] <= weight[mask]).all())
    assert bool((restored[~mask] == 0).all()) and not bool(torch.signbit(restored[~mask]).any())


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_cover_the_kept_range(bits: int) -> None:
    weight, mask = _case((16, 50), bits, 0.6, 0.1, 0.2)
    q = quantize(weight, mask, bits)
    lo, step = _channel_params(q)
    top = lo + (2**bits - 1) * step
    kept_min = torch.where(mask, weight, torch.inf).amin(dim=1, keepdim=True)
    kept_max = torch.where(mask, weight, -torch.inf).amax(dim=1, keepdim=True)
    assert bool((lo <= kept_min).all()) and bool((top >= kept_max).all())
    codes = torch.zeros(weight.shape, dtype=torch.int64)
    codes[mask] = torch.from_numpy(q.codes).long()
    assert bool((codes[mask] >= 0).all()) and bool((codes[mask] < 2**bits).all())
    # Both ends of each channel's range are used.
    assert bool((torch.where(mask, codes, 2**bits).amin(dim=1) == 0).all())
    assert bool((torch.where(mask, codes, -1).amax(dim=1) == 2**bits - 1).all())


def test_one_bit_gives_two_levels_per_channel() -> None:
    weight, mask = _case((8, 64), 3, 0.7, 0.0, 1.0)
    out = quantize_dequantize(weight, mask, 1)
    q = quantize(weight, mask, 1)
    lo, step = _channel_params(q)
    for channel in range(8):
        levels = torch.unique(out[channel][mask[channel]])
        assert levels.tolist() == [lo[channel].item(), (lo[channel] + step[channel]).item()]


def test_all_pruned_channel() -> None:
    weight, mask = _case((3, 10), 0, 1.0, 0.0, 1.0)
    mask[1] = False
    q = quantize(weight, mask, 4)
    assert q.lo[1] == 0 and q.step[1] == 0
    out = dequantize(q, mask)
    assert bool((out[1] == 0).all())
    alone = quantize_dequantize(weight[[0, 2]], mask[[0, 2]], 4)
    assert _bits_equal(out[[0, 2]], alone)


def test_all_pruned_tensor() -> None:
    weight = torch.randn(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    q = quantize(weight, mask, 3)
    assert q.codes.size == 0
    assert _bits_equal(dequantize(q, mask), torch.zeros(4, 4))
    assert _bits_equal(quantize_dequantize(weight, mask, 3), torch.zeros(4, 4))


@pytest.mark.parametrize("value", [0.5, -2.0, 0.3, 1e-3, 0.0])
def test_constant_channel(value: float) -> None:
    weight = torch.full((2, 12), value)
    weight[1] = torch.linspace(-1, 1, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    for bits in (1, 4, 8):
        out = quantize_dequantize(weight, mask, bits)
        step = float(quantize(weight, mask, bits).step[0])
        assert torch.unique(out[0]).numel() == 1
        assert abs(out[0, 0].item() - value) <= step / 2 + 1e-7 * abs(value)
        assert step <= 2.0**-10 * abs(value)  # at most the float16 rounding gap of lo
        assert _bits_equal(out, dequantize(quantize(weight, mask, bits), mask))
    if float(np.float16(value)) == value:
        assert quantize(weight, mask, 4).step[0] == 0
        assert bool((quantize_dequantize(weight, mask, 4)[0] == value).all())


def test_fp16_parameters_are_rounded_outward() -> None:
    # 0.1 is not a float16; lo must round down so the smallest weight is still covered.
    weight = torch.tensor([[0.1, 0.2, 0.7]])
    q = quantize(weight, torch.ones_like(weight, dtype=torch.bool), 2)
    assert float(q.lo[0]) <= 0.1 < float(np.nextafter(q.lo[0], np.float16(1)))
    assert float(q.lo[0]) + 3 * float(q.step[0]) >= 0.7


def test_fp32_passthrough() -> None:
    weight, mask = _case((5, 6), 1, 0.5, 0.0, 1.0)
    out = quantize_dequantize(weight, mask, FP32_BITS)
    assert torch.equal(out, weight * mask)
    assert _bits_equal(out[mask], weight[mask])


@pytest.mark.parametrize("bits", [1, 3, 8, FP32_BITS])
def test_fake_quantize_forward_and_straight_through_gradient(bits: int) -> None:
    weight, mask = _case((6, 4, 3, 3), bits, 0.5, 0.0, 1.0)
    weight.requires_grad_(True)
    out = fake_quantize(weight, mask, bits)
    assert _bits_equal(out.detach(), quantize_dequantize(weight, mask, bits))
    upstream = torch.randn(weight.shape)
    (out * upstream).sum().backward()
    assert weight.grad is not None
    assert torch.equal(weight.grad[mask], upstream[mask])
    assert bool((weight.grad[~mask] == 0).all())


def test_quantize_dequantize_takes_parameters_and_does_not_modify_them() -> None:
    layer = torch.nn.Conv2d(3, 8, 3)
    before = layer.weight.detach().clone()
    mask = torch.rand(layer.weight.shape) < 0.5
    out = quantize_dequantize(layer.weight, mask, 4)
    assert not out.requires_grad
    assert torch.equal(layer.weight.detach(), before)


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_bad_bits_rejected(bits: int) -> None:
    weight = torch.randn(3, 3)
    mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="bits"):
        quantize(weight, mask, bits)
    with pytest.raises(ValueError, match="bits"):
        quantize_dequantize(weight, mask, bits)


def test_mismatched_mask_rejected() -> None:
    weight = torch.randn(3, 3)
    with pytest.raises(ValueError, match="mask"):
        quantize(weight, torch.ones(3, 4, dtype=torch.bool), 4)
    q = quantize(weight, torch.ones(3, 3, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="codes"):
        dequantize(q, torch.eye(3, dtype=torch.bool))
