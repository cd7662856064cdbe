"""Tests for fine-grained magnitude pruning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.pruning import apply_mask, magnitude_mask, pruned_count

_SHAPES = st.sampled_from([(1,), (7,), (3, 5), (4, 3, 2, 2), (16, 9)])


@given(shape=_SHAPES, permille=st.integers(0, 999), seed=st.integers(0, 2**16))
@settings(max_examples=80, deadline=None)
def test_exact_number_of_zeros_and_largest_kept(shape: tuple[int, ...], permille: int, seed: int) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_mask(weight, permille / 1000)
    numel = weight.numel()
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    expected_pruned = min(permille * numel // 1000, numel - 1)
    assert int((~mask).sum()) == expected_pruned
    if expected_pruned:
        assert weight[mask].abs().min() >= weight[~mask].abs().max()


@given(shape=_SHAPES, permille=st.integers(0, 999), seed=st.integers(0, 2**16))
@settings(max_examples=80, deadline=None)
def test_matches_stable_sort_with_many_ties(shape: tuple[int, ...], permille: int, seed: int) -> None:
    weight = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()
    mask = magnitude_mask(weight, permille / 1000)
    order = torch.argsort(weight.abs().reshape(-1), stable=True)
    expected = torch.ones(weight.numel(), dtype=torch.bool)
    expected[order[: int((~mask).sum())]] = False
    assert torch.equal(mask, expected.reshape(shape))


@pytest.mark.parametrize(
    ("numel", "sparsity", "pruned"),
    [(100, 0.29, 29), (10, 0.5, 5), (10, 0.99, 9), (1, 0.9, 0), (5, 0.999, 4), (1000, 0.9999, 999), (8, 0.0, 0)],
)
def test_pruned_count(numel: int, sparsity: float, pruned: int) -> None:
    assert pruned_count(numel, sparsity) == pruned
    assert int((~magnitude_mask(torch.randn(numel), sparsity)).sum()) == pruned


def test_never_all_zero() -> None:
    weight = torch.zeros(4, 4)
    mask = magnitude_mask(weight, 0.99)
    assert int(mask.sum()) == 1


def test_ties_broken_by_flat_index() -> None:
    weight = torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, 2.0]])
    mask = magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[False, False, False], [True, True, True]]
    assert torch.equal(magnitude_mask(weight, 0.5), mask)


def test_sparsity_zero_is_identity() -> None:
    weight = torch.randn(6, 5)
    mask = magnitude_mask(weight, 0.0)
    assert bool(mask.all())
    before = weight.clone()
    apply_mask(weight, mask)
    assert torch.equal(weight, before)


def test_apply_mask_zeroes_in_place_on_parameter() -> None:
    layer = torch.nn.Linear(8, 4)
    before = layer.weight.detach().clone()
    mask = magnitude_mask(layer.weight, 0.75)
    apply_mask(layer.weight, mask)
    assert int((layer.weight == 0).sum()) == 24
    assert torch.equal(layer.weight[mask], before[mask])
    assert layer.weight.requires_grad and layer.weight.grad_fn is None


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_bad_sparsity_rejected(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(torch.randn(10), sparsity)


def test_apply_mask_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="mask"):
        apply_mask(torch.randn(3, 3), torch.ones(9, dtype=torch.bool))
