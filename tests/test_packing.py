"""Tests for the packed model file format."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.packing import (
    MAGIC,
    PackFormatError,
    WeightEncoding,
    _decode_index,
    _encode_index,
    pack,
    read_header,
    read_packed,
    unpack,
    write_packed,
)
from methods.pruning import magnitude_mask
from methods.quantization import FP32_BITS, quantize_dequantize
from methods.symbol_coding import pack_bits, unpack_bits

_ALL_BITS = [*range(1, 9), FP32_BITS]


def _header(blob: bytes) -> dict[str, Any]:
    (length,) = struct.unpack("<I", blob[4:8])
    return json.loads(zlib.decompress(blob[8 : 8 + length]))


def _entry(blob: bytes, name: str) -> dict[str, Any]:
    return next(entry for entry in _header(blob)["tensors"] if entry["name"] == name)


def _lenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 800), "fc2": (10, 500)}
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=generator) * 0.1
        state[f"{name}.bias"] = torch.randn(shape[0], generator=generator)
    state["bn.running_var"] = torch.rand(50, generator=generator)
    state["bn.num_batches_tracked"] = torch.tensor(12345, dtype=torch.int64)
    return state


def _encodings(state: dict[str, torch.Tensor], sparsity: float, bits: int) -> dict[str, WeightEncoding]:
    return {
        name: WeightEncoding(magnitude_mask(tensor, sparsity), bits)
        for name, tensor in state.items()
        if name.endswith(".weight")
    }


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("bits", _ALL_BITS)
def test_round_trip(bits: int, sparsity: float) -> None:
    state = _lenet_state(bits)
    encodings = _encodings(state, sparsity, bits)
    meta = {"bits": bits, "sparsity": sparsity}
    got_meta, got = unpack(pack(state, encodings, meta))
    assert got_meta == meta
    assert list(got) == list(state)
    for name, tensor in state.items():
        if name in encodings:
            mask = encodings[name].mask
            assert _bits_equal(got[name], quantize_dequantize(tensor, mask, bits))
            if bits == FP32_BITS:
                assert torch.equal(got[name], tensor * mask)
        else:
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


@pytest.mark.parametrize(
    ("sparsity", "mode"), [(0.0, "dense"), (0.5, "bitmask"), (0.3, "bitmask"), (0.95, "relative"), (0.99, "relative")]
)
def test_index_mode_selection(sparsity: float, mode: str) -> None:
    weight = torch.randn(200, 300)
    blob = pack({"w": weight}, {"w": WeightEncoding(magnitude_mask(weight, sparsity), 4)}, {})
    entry = _entry(blob, "w")
    assert entry["index"] == mode
    if mode == "dense":
        assert entry["lengths"][0] == 0
    if mode == "bitmask":
        assert entry["lengths"][0] == weight.numel() // 8


def _reference_relative_len(positions: np.ndarray, k: int) -> int:
    """Bytes of a relative index written by a plain loop."""
    symbols, previous = 0, -1
    for position in positions.tolist():
        gap = position - previous - 1
        symbols += gap // (2**k - 1) + 1
        previous = position
    return (symbols * k + 7) // 8


@given(
    numel=st.integers(1, 3000),
    density=st.floats(0.0, 1.0),
    clustered=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None)
def test_index_is_smallest_and_round_trips(numel: int, density: float, clustered: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if clustered:  # long runs of pruned weights exercise the escape path
        flat_mask = np.zeros(numel, dtype=bool)
        starts = rng.integers(0, numel, size=max(1, int(density * 10)))
        for start in starts:
            flat_mask[start : start + int(rng.integers(1, 20))] = True
    else:
        flat_mask = rng.random(numel) < density
    positions = np.flatnonzero(flat_mask)
    dense = positions.size == numel
    fixed = _encode_index(numel, None if dense else positions, allow_huffman=False)
    coded = _encode_index(numel, None if dense else positions, allow_huffman=True)
    candidates = {"bitmask": (numel + 7) // 8}
    for width in range(2, 9):
        candidates[f"relative{width}"] = _reference_relative_len(positions, width)
    if dense:
        assert (fixed.entry["index"], fixed.data) == ("dense", b"")
    else:
        mode, k = fixed.entry["index"], fixed.entry.get("k")
        assert len(fixed.data) == min(candidates.values())
        assert len(fixed.data) == candidates["bitmask" if mode == "bitmask" else f"relative{k}"]
        assert len(coded.data) <= len(fixed.data)  # Huffman is only chosen when it is smaller
    for index in (fixed, coded):
        decoded_mask, decoded_positions = _decode_index(index.entry, memoryview(index.data), numel, positions.size)
        assert np.array_equal(decoded_mask, flat_mask)
        if decoded_positions is not None:
            assert np.array_equal(decoded_positions, positions)


def test_relative_index_with_long_gaps() -> None:
    weight = torch.randn(10, 1000) + 5.0  # no kept value is near zero
    mask = torch.zeros(10, 1000, dtype=torch.bool)
    flat = [0, 1, 2, 3, 700, 5000, 5001, 5999, 9999]
    mask.view(-1)[flat] = True
    for bits in (3, FP32_BITS):
        blob = pack({"w": weight}, {"w": WeightEncoding(mask, bits)}, {})
        entry = _entry(blob, "w")
        assert entry["index"] == "relative"
        assert entry["lengths"][0] < weight.numel() // 8 // 20  # far below a bitmask, escapes used
        out = unpack(blob)[1]["w"]
        assert torch.nonzero(out.view(-1)).view(-1).tolist() == flat
        assert _bits_equal(out, quantize_dequantize(weight, mask, bits))


@pytest.mark.parametrize("flat", [[], [0], [9999], [5000]])
def test_extreme_masks(flat: list[int]) -> None:
    weight = torch.randn(100, 100) + 5.0
    mask = torch.zeros(100, 100, dtype=torch.bool)
    mask.view(-1)[flat] = True
    blob = pack({"w": weight}, {"w": WeightEncoding(mask, 5)}, {})
    assert _bits_equal(unpack(blob)[1]["w"], quantize_dequantize(weight, mask, 5))


@given(bits=st.integers(1, 8), count=st.integers(0, 100), seed=st.integers(0, 2**16))
@settings(max_examples=200, deadline=None)
def test_bit_packing_matches_numpy_reference(bits: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 2**bits, size=count).astype(np.uint8)
    reference = np.packbits(np.unpackbits(values[:, None], axis=1)[:, 8 - bits :]).tobytes()
    data = pack_bits(values, bits)
    assert data == reference
    assert np.array_equal(unpack_bits(data, bits, count), values)


def test_written_file_size_and_read_back(tmp_path: Path) -> None:
    state = _lenet_state()
    blob = pack(state, _encodings(state, 0.8, 6), {"task": "lenet"})
    path = tmp_path / "model.acz"
    write_packed(path, blob)
    assert path.stat().st_size == len(blob)
    assert list(tmp_path.iterdir()) == [path]
    meta, got = read_packed(path)
    _, expected = unpack(blob)
    assert meta == {"task": "lenet"}
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    write_packed(path, b"replaced")
    assert path.read_bytes() == b"replaced"
    assert list(tmp_path.iterdir()) == [path]


def test_meta_round_trip() -> None:
    meta = {
        "model": {"source": "torchvision:resnet18", "args": [1, 2.5, None, True]},
        "policy": [["conv1", {"sparsity": 0.123456, "bits": 4, "keep": 0.5}]],
        "history": [],
        "unicode": "Größe ✓",
        "tiny": 1e-300,
        "big": 2**62,
    }
    got, _ = unpack(pack({}, {}, meta))
    assert got == meta


def test_raw_entries_keep_dtype_and_values() -> None:
    state = {
        "count": torch.tensor(7, dtype=torch.int64),
        "ids": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        "flags": torch.tensor([True, False, True]),
        "half": torch.randn(3, 4).half(),
        "brain": torch.randn(5).bfloat16(),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
    }
    _, got = unpack(pack(state, {}, {}))
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name], tensor)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packed_size_shrinks_with_bits(bits: int) -> None:
    weight = torch.randn(500, 800)
    state = {"w": weight}
    full = len(pack(state, {"w": WeightEncoding(torch.ones_like(weight, dtype=torch.bool), FP32_BITS)}, {}))
    ones = torch.ones_like(weight, dtype=torch.bool)
    size = len(pack(state, {"w": WeightEncoding(ones, bits, huffman=False)}, {}))
    ratio = size / full
    assert bits / 32 <= ratio < bits / 32 + 0.01
    coded = len(pack(state, {"w": WeightEncoding(ones, bits)}, {}))
    assert coded <= size  # Huffman coding is used only where it is smaller
    assert abs(len(pack(state, {}, {})) - full) < 64


def test_pruning_shrinks_fp32_size() -> None:
    weight = torch.randn(500, 800)
    sizes = [
        len(pack({"w": weight}, {"w": WeightEncoding(magnitude_mask(weight, sparsity), FP32_BITS)}, {}))
        for sparsity in (0.0, 0.5, 0.9, 0.99)
    ]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[3] < 0.02 * sizes[0]


def _valid_blob() -> bytes:
    weight = torch.randn(20, 30)
    state = {"w": weight, "b": torch.randn(20), "n": torch.tensor(3)}
    return pack(state, {"w": WeightEncoding(magnitude_mask(weight, 0.7), 4)}, {"x": 1})


def test_corrupt_blobs_rejected() -> None:
    blob = _valid_blob()
    (header_len,) = struct.unpack("<I", blob[4:8])
    bad = [
        b"",
        b"ACZ",
        b"PK\x03\x04" + blob[4:],
        blob[:8],
        blob[: 8 + header_len // 2],
        blob[:-1],
        blob + b"\x00",
        blob[:4] + struct.pack("<I", 2**32 - 1) + blob[8:],
        blob[:10] + bytes([blob[10] ^ 0xFF]) + blob[11:],
        blob[:-5] + bytes([blob[-5] ^ 0x01]) + blob[-4:],
    ]
    bad += [blob[:cut] for cut in range(0, len(blob), 37)]
    for corrupt in bad:
        with pytest.raises(PackFormatError, match="not a packed model"):
            unpack(corrupt)


def _with_header(blob: bytes, header: dict[str, Any]) -> bytes:
    (length,) = struct.unpack("<I", blob[4:8])
    raw = zlib.compress(json.dumps(header).encode())
    return MAGIC + struct.pack("<I", len(raw)) + raw + blob[8 + length :]


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.pop("tensors"),
        lambda h: h.update(version=99),
        lambda h: h["tensors"][0].update(index="zigzag"),
        lambda h: h["tensors"][0].update(kept=h["tensors"][0]["kept"] + 1),
        lambda h: h["tensors"][0].update(shape=[21, 30]),
        lambda h: h["tensors"][0].update(bits=9),
        lambda h: h["tensors"][1].update(dtype="not_a_dtype"),
        lambda h: h["tensors"][1].update(offset=3),
        lambda h: h["tensors"][2].update(lengths=[4]),
    ],
)
def test_inconsistent_header_rejected(edit: Any) -> None:
    blob = _valid_blob()
    header = _header(blob)
    assert unpack(_with_header(blob, header))[0] == {"x": 1}
    edit(header)
    with pytest.raises(PackFormatError, match="not a packed model"):
        unpack(_with_header(blob, header))


def test_pack_rejects_bad_input() -> None:
    weight = torch.randn(4, 4)
    ones = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="missing"):
        pack({"w": weight}, {"v": WeightEncoding(ones, 4)}, {})
    with pytest.raises(ValueError, match="mask"):
        pack({"w": weight}, {"w": WeightEncoding(torch.ones(16, dtype=torch.bool), 4)}, {})
    with pytest.raises(ValueError, match="bits"):
        pack({"w": weight}, {"w": WeightEncoding(ones, 16)}, {})
    with pytest.raises(ValueError, match="JSON"):
        pack({"w": weight}, {}, {"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        pack({"w": weight}, {}, {"nan": float("nan")})
    with pytest.raises(ValueError, match="JSON unchanged"):
        pack({"w": weight}, {}, {"policy": (("conv1", 4),)})
    with pytest.raises(TypeError, match="not a tensor"):
        pack({"w": 3}, {}, {})


@pytest.mark.parametrize("bits", [2, 5, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_kmeans_weight_sharing_round_trip_is_exact(bits: int, sparsity: float) -> None:
    from methods.kmeans import kmeans_quantize_dequantize

    torch.manual_seed(bits)
    weight = torch.randn(64, 300)
    mask = magnitude_mask(weight, sparsity)
    shared = kmeans_quantize_dequantize(weight, mask, bits)
    for huffman in (False, True):
        blob = pack({"w": shared}, {"w": WeightEncoding(mask, bits, "kmeans", huffman=huffman)}, {})
        out = unpack(blob)[1]["w"]
        assert _bits_equal(out, shared)
        entry = _entry(blob, "w")
        assert entry["encoding"] == "kmeans" and entry["centroids"] <= 2**bits
    assert len(torch.unique(out[mask])) <= 2**bits


def test_huffman_codes_shrink_a_skewed_layer_and_round_trip() -> None:
    torch.manual_seed(0)
    weight = torch.randn(100, 400) ** 3  # heavy tails: most codes sit near the middle of the grid
    mask = torch.ones_like(weight, dtype=torch.bool)
    fixed = pack({"w": weight}, {"w": WeightEncoding(mask, 6, huffman=False)}, {})
    coded = pack({"w": weight}, {"w": WeightEncoding(mask, 6)}, {})
    assert _entry(coded, "w")["codes_coding"] == "huffman"
    assert len(coded) < 0.9 * len(fixed)
    assert _bits_equal(unpack(coded)[1]["w"], unpack(fixed)[1]["w"])


def test_the_header_records_an_optional_runtime_name_and_checks_it() -> None:
    assert read_header(pack({}, {}, {"runtime": "torch-int8"})).runtime == "torch-int8"
    assert read_header(pack({}, {}, {})).runtime is None  # files written before runtimes were recorded
    for bad in ("", "a b", "x" * 65, 3, ["torch"], "torch\n"):
        with pytest.raises(PackFormatError, match="not a packed model"):
            read_header(pack({}, {}, {"runtime": bad}))
