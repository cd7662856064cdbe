"""Conformance of every registered quantizer (methods/quantizers/): file round trip, size bound, fine-tuning.

Parametrized over ``QUANTIZERS.items()``: a new quantizer is checked as soon as it is registered.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from core.policy import LayerChoice, Policy
from core.registry import UnknownEntryError
from core.space import SpaceSettings
from methods.finetune import CodeSpec, FinetuneSettings, masked_finetune
from methods.packed_size import weight_bytes_upper
from methods.packing import (
    RESERVED_ENCODINGS,
    WeightEncoding,
    index_bytes,
    pack,
    pack_model,
    unpack,
    weight_payload_bytes,
)
from methods.pipeline import compress
from methods.quantizers import QUANTIZERS, Quantizer, check_quantizer_names, stored_weight

ENTRIES = QUANTIZERS.items()
IDS = [name for name, _ in ENTRIES]
SHAPES = st.sampled_from([(1,), (7,), (4, 9), (12, 30), (6, 3, 3, 3), (2, 1, 1, 1), (40, 50)])
DENSITIES = st.sampled_from([0.0, 0.02, 0.3, 0.7, 1.0])
KINDS = st.sampled_from(["normal", "few_values", "constant", "offset"])


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _case(shape: tuple[int, ...], kind: str, density: float, clustered: bool, seed: int) -> tuple[torch.Tensor, ...]:
    """A weight of the given kind and a keep-mask with about ``density`` kept."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * 0.1
    if kind == "few_values":
        weight = torch.round(weight * 10) / 10
    elif kind == "constant":
        weight = torch.full(shape, 0.37)
    elif kind == "offset":
        weight = weight * 40 - 300
    numel = weight.numel()
    kept = int(round(density * numel))
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[:kept] = True
    if not clustered:
        flat = flat[torch.randperm(numel, generator=generator)]
    return weight, flat.reshape(shape)


def _distinct_ok(quantizer: Quantizer, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> bool:
    """At most ``max_distinct`` kept values per sharing group (a channel or the whole tensor)."""
    groups = zip(stored.reshape(stored.shape[0], -1), mask.reshape(mask.shape[0], -1), strict=True)
    pairs = groups if quantizer.per_channel else [(stored.reshape(-1), mask.reshape(-1))]
    return all(len(torch.unique(values[kept])) <= quantizer.max_distinct(int(kept.sum()), bits)
               for values, kept in pairs)


def _on_codes(quantizer: Quantizer, stored: torch.Tensor, mask: torch.Tensor, bits: int) -> None:
    """``stored`` is a weight the quantizer can store: +0.0 where masked, kept values on its codes, few values."""
    assert quantizer.contains(stored, mask, bits)
    assert _distinct_ok(quantizer, stored, mask, bits)


@pytest.mark.parametrize(("name", "quantizer"), ENTRIES, ids=IDS)
def test_registered_entries_are_quantizers_with_file_names(name: str, quantizer: Quantizer) -> None:
    assert isinstance(quantizer, Quantizer)
    assert name not in RESERVED_ENCODINGS and name.isidentifier()


@pytest.mark.parametrize(("name", "quantizer"), ENTRIES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, kind=KINDS, density=DENSITIES, clustered=st.booleans(), bits=st.integers(1, 8),
       huffman=st.booleans(), seed=st.integers(0, 2**16))
def test_pack_then_unpack_is_quantize_dequantize_and_within_the_bound(
    name: str, quantizer: Quantizer, shape: tuple[int, ...], kind: str, density: float, clustered: bool, bits: int,
    huffman: bool, seed: int,
) -> None:
    weight, mask = _case(shape, kind, density, clustered, seed)
    stored = quantizer.quantize_dequantize(weight, mask, bits)
    assert _bits_equal(stored_weight(weight, mask, bits, name), stored)
    _on_codes(quantizer, stored, mask, bits)
    encoding = WeightEncoding(mask, bits, name, huffman=huffman)
    for source in (weight, stored):  # the pipeline packs the stored weight
        blob = pack({"w": source}, {"w": encoding}, {})
        decoded = unpack(blob)[1]["w"]
        assert _bits_equal(decoded, quantizer.quantize_dequantize(source, mask, bits))
        packed = pack_model({"w": source}, {"w": encoding}, {})  # what the search measures, without decoding
        assert packed.blob == blob and _bits_equal(packed.state["w"], decoded)
    real = weight_payload_bytes(stored, encoding)
    numel, kept, channels = weight.numel(), int(mask.sum()), shape[0]
    assert real <= weight_bytes_upper(numel, channels, kept, bits, quantizer=name)
    assert real <= weight_bytes_upper(numel, channels, kept, bits, index=index_bytes(mask, huffman), quantizer=name)
    assert real - index_bytes(mask, huffman) <= quantizer.bytes_upper(numel=numel, kept=kept, bits=bits,
                                                                      channels=channels)


@pytest.mark.parametrize(("name", "quantizer"), ENTRIES, ids=IDS)
@pytest.mark.parametrize(("bits", "density"), [(1, 1.0), (2, 0.3), (3, 0.7), (5, 0.5), (8, 0.9)])
def test_finetuning_through_the_parametrization_stays_on_codes(
    name: str, quantizer: Quantizer, bits: int, density: float
) -> None:
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 4))
    weight, mask = _case((12, 20), "normal", density, False, bits)
    with torch.no_grad():
        model[0].weight.copy_(stored_weight(weight, mask, bits, name))
    start = model[0].weight.detach().clone()
    layer = quantizer.parametrization(start, mask, bits)
    assert _bits_equal(layer(start), start)  # a stored weight passes through unchanged
    data = TensorDataset(torch.randn(64, 20), torch.randint(0, 4, (64,)))
    masked_finetune(model, {"0": mask}, {"0": CodeSpec(bits, name)}, data, FinetuneSettings(steps=6, lr=0.05,
                                                                                           batch_size=16))
    tuned = model[0].weight.detach()
    assert not parametrize.is_parametrized(model[0])
    assert not torch.equal(tuned, start)  # the fine-tune trained something
    _on_codes(quantizer, tuned, mask, bits)
    blob = pack({"w": tuned}, {"w": WeightEncoding(mask, bits, name)}, {})
    assert _bits_equal(unpack(blob)[1]["w"], quantizer.quantize_dequantize(tuned, mask, bits))


@pytest.mark.parametrize(("name", "quantizer"), ENTRIES, ids=IDS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_contains_rejects_weights_off_codes(name: str, quantizer: Quantizer, bits: int) -> None:
    weight, mask = _case((12, 40), "normal", 1.0, False, bits)  # 40 distinct values per channel > 2**bits
    assert not quantizer.contains(weight, mask, bits)
    stored = quantizer.quantize_dequantize(weight, mask, bits)
    pruned = mask.clone()
    pruned[0, 0] = False
    assert quantizer.contains(stored, mask, bits) and not quantizer.contains(stored, pruned, bits)


def test_unknown_quantizer_names_get_one_clear_message() -> None:
    policy = Policy.from_choices({"a": LayerChoice(0.5, 4, quantizer="pq"), "b": LayerChoice(0.5, 4),
                                  "c": LayerChoice(0.1, 2, quantizer="pq")})
    with pytest.raises(UnknownEntryError, match=r"unknown quantizer 'pq' \(layer a, layer c\); registered") as info:
        check_quantizer_names(policy)
    assert all(name in str(info.value) for name in QUANTIZERS)
    with pytest.raises(UnknownEntryError, match=r"'nf4' \(the search space\)"):
        check_quantizer_names(SpaceSettings(quantizers=("linear", "nf4")))
    check_quantizer_names(SpaceSettings(quantizers=tuple(QUANTIZERS)))
    check_quantizer_names(Policy.from_choices({"a": LayerChoice(0.5, 4, quantizer=IDS[-1])}))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    bad = Policy.from_choices({"1": LayerChoice(0.5, 4, quantizer="pq")})
    with pytest.raises(UnknownEntryError, match="unknown quantizer 'pq' \\(layer 1\\)"):
        compress(model, bad, input_shape=(4,), source={"model": "x"})
    with pytest.raises(ValueError, match="unknown quantizer 'pq'"):
        pack({"w": torch.ones(2, 2)}, {"w": WeightEncoding(torch.ones(2, 2, dtype=torch.bool), 4, "pq")}, {})


@pytest.mark.parametrize("name", IDS)
def test_an_all_pruned_layer_round_trips(name: str) -> None:
    weight, mask = torch.randn(3, 5), torch.zeros(3, 5, dtype=torch.bool)
    out = unpack(pack({"w": weight}, {"w": WeightEncoding(mask, 3, name)}, {}))[1]["w"]
    assert _bits_equal(out, torch.zeros(3, 5))
