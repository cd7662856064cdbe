"""HashedNets (methods/quantizers/hashed.py): K shared values and a seed per layer, no index, no codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.policy import LayerChoice, Policy
from methods.finetune import FinetuneSettings
from methods.packing import WeightEncoding, pack, read_header, unpack, weight_payload_bytes
from methods.pipeline import Refinement, compress
from methods.quantizers import QUANTIZERS
from methods.quantizers.hashed import HashedValues, bucket_count, hash_positions
from search import load_model
from tests.fixtures.tiny_nets import INPUT_SHAPE, TinyCNN, tiny_cnn, tiny_data

SOURCE = {"task": "test"}

HASHED = QUANTIZERS["hashed"]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_a_dense_layer_stores_exactly_its_bucket_values(bits: int) -> None:
    """No index and no codes: the payload is ``4 * ceil(n * bits / 32)`` bytes, ``32 / bits`` times below fp32."""
    weight = torch.randn(50, 40)
    mask = torch.ones_like(weight, dtype=torch.bool)
    buckets = bucket_count(weight.numel(), bits)
    assert buckets == -(-2000 * bits // 32)
    encoding = WeightEncoding(mask, bits, "hashed")
    assert weight_payload_bytes(weight, encoding) == 4 * buckets
    blob = pack({"w": weight}, {"w": encoding}, {})
    entry = read_header(blob).tensors[0]
    assert entry["buckets"] == buckets and isinstance(entry["seed"], int) and entry["index"] == "dense"
    assert entry["lengths"] == [0, 4 * buckets, 0]  # no index, the bucket values, no codes
    decoded = unpack(blob)[1]["w"]
    assert torch.equal(decoded, HASHED.quantize_dequantize(weight, mask, bits))
    assert len(torch.unique(decoded.abs())) <= buckets


def test_the_projection_is_the_least_squares_fit_of_the_buckets() -> None:
    """Each bucket's value is the mean of its signed weights: the residual sums to zero in every bucket, and
    moving any bucket value makes the error larger."""
    weight, mask = torch.randn(30, 20), torch.rand(30, 20) > 0.3
    stored = HASHED.quantize_dequantize(weight, mask, 4)
    positions = np.flatnonzero(mask.numpy().reshape(-1))
    buckets = bucket_count(positions.size, 4)
    bucket, sign = hash_positions(positions, buckets, 0x5EED)
    residual = ((weight - stored)[mask] * torch.from_numpy(sign)).double()
    per_bucket = torch.zeros(buckets, dtype=torch.float64).index_add_(0, torch.from_numpy(bucket), residual)
    assert per_bucket.abs().max() < 1e-5
    error = float(((weight - stored)[mask] ** 2).sum())
    for shift in (-1e-2, 1e-2):
        values = stored[mask] * torch.from_numpy(sign)
        moved = values + shift * torch.from_numpy(bucket == 0).float()
        assert float(((weight[mask] - moved * torch.from_numpy(sign)) ** 2).sum()) > error
    assert bool((stored[~mask] == 0).all())


def test_the_hash_spreads_positions_over_buckets_and_signs() -> None:
    bucket, sign = hash_positions(np.arange(64_000), 64, seed=7)
    counts = np.bincount(bucket, minlength=64)
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per bucket
    assert abs(float(sign.mean())) < 0.02
    other, _ = hash_positions(np.arange(64_000), 64, seed=8)
    assert (other != bucket).mean() > 0.9  # a different seed, a different sharing


def test_a_bucket_value_gets_the_signed_sum_of_its_weights_gradients() -> None:
    """The paper's backward pass: dL/dv_k = sum over the weights in bucket k of sign * dL/dw."""
    mask = torch.rand(8, 6) > 0.2
    stored = HASHED.quantize_dequantize(torch.randn(8, 6), mask, 8)
    layer = HashedValues(stored, mask, 8)
    assert torch.equal(layer(stored), stored)
    upstream = torch.randn(8, 6)
    (layer(stored) * upstream).sum().backward()
    expected = torch.zeros_like(layer.values).index_add_(0, layer.bucket, upstream[mask] * layer.sign)
    assert torch.allclose(layer.values.grad, expected)


def test_a_corrupt_bucket_count_or_seed_is_refused() -> None:
    """The file's bucket count must be the one its kept count and bits give, and its seed a 32-bit integer."""
    entry = read_header(pack({"w": torch.randn(6, 5)}, {"w": WeightEncoding(torch.ones(6, 5, dtype=torch.bool), 4,
                                                                            "hashed")}, {})).tensors[0]
    assert HASHED.table_sizes(entry, (6, 5), 4) == [4 * bucket_count(30, 4)]
    for field, value in (("buckets", entry["buckets"] + 1), ("seed", -1), ("seed", "0")):
        with pytest.raises(ValueError):
            HASHED.table_sizes({**entry, field: value}, (6, 5), 4)


def test_a_hashed_policy_compresses_finetunes_and_reloads_exactly(tmp_path: Path) -> None:
    """A whole model with hashed layers (and one pruned): smaller file, fine-tuned bucket values, exact reload."""
    model = tiny_cnn()
    layers = ("conv1", "conv2", "fc1", "fc2")
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.5 if name == "fc1" else 0.0, bits=2,
                                                    quantizer="hashed") for name in layers})
    refinement = Refinement(finetune=FinetuneSettings(steps=4, lr=1e-2, batch_size=16), train=tiny_data(64))
    dense = compress(model, Policy(), input_shape=INPUT_SHAPE, source=SOURCE)
    hashed = compress(model, policy, input_shape=INPUT_SHAPE, source=SOURCE, refinement=refinement)
    assert hashed.size_bytes < 0.5 * dense.size_bytes
    for name in layers:
        weight = dict(hashed.model.named_modules())[name].weight
        kept = int((weight != 0).sum())
        assert len(torch.unique(weight[weight != 0].abs())) <= bucket_count(kept, 2)
    path = tmp_path / "h.acz"
    path.write_bytes(hashed.blob)
    x = torch.randn(3, *INPUT_SHAPE)
    with torch.inference_mode():
        assert torch.equal(load_model(path, model=TinyCNN())(x), hashed.model(x))
