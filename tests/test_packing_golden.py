"""A packed file written before the quantizer registry: it still loads, and the same inputs pack to the same bytes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.packing import PackFormatError, WeightEncoding, pack, pack_model, unpack, verify_packed

GOLDEN = Path(__file__).parent / "fixtures" / "golden_v1.acz"
"""Written by :func:`golden_blob` with the packer as it was before quantizers became a registry."""


def _weight(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * np.float32(0.1))


def _mask(rng: np.random.Generator, shape: tuple[int, ...], density: float, clustered: bool = False) -> torch.Tensor:
    numel = int(np.prod(shape))
    kept = int(round(density * numel))
    flat = np.zeros(numel, dtype=bool)
    if clustered:
        flat[:kept] = True
    else:
        flat[rng.permutation(numel)[:kept]] = True
    return torch.from_numpy(flat).reshape(shape)


def golden_inputs() -> tuple[dict[str, torch.Tensor], dict[str, WeightEncoding], dict]:
    """State, encodings and meta covering every encoding, index mode and code coding (numpy's PCG64: stable)."""
    rng = np.random.default_rng(20240601)
    cases = {  # name: (shape, density, clustered, bits, quantizer, huffman)
        "linear_huffman": ((16, 24), 0.3, False, 4, "linear", True),
        "linear_fixed_dense": ((12, 20), 1.0, False, 8, "linear", False),
        "linear_conv_1bit": ((6, 3, 3, 3), 0.5, False, 1, "linear", True),
        "linear_relative": ((40, 50), 0.04, False, 5, "linear", True),
        "kmeans_relative": ((8, 30), 0.1, False, 3, "kmeans", True),
        "kmeans_dense": ((10, 16), 1.0, False, 2, "kmeans", True),
        "kmeans_fixed_clustered": ((9, 13), 0.6, True, 6, "kmeans", False),
        "kmeans_few_values": ((5, 7), 0.8, False, 8, "kmeans", True),
        "fp32_bitmask": ((10, 10), 0.5, False, 32, "linear", True),
        "fp32_dense": ((4, 6), 1.0, False, 32, "linear", False),
    }
    state: dict[str, torch.Tensor] = {}
    encodings: dict[str, WeightEncoding] = {}
    for name, (shape, density, clustered, bits, quantizer, huffman) in cases.items():
        weight = _weight(rng, shape)
        if name == "kmeans_few_values":
            weight = torch.round(weight * 20) / 20
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = _weight(rng, shape[:1])
        encodings[f"{name}.weight"] = WeightEncoding(_mask(rng, shape, density, clustered), bits, quantizer, huffman)
    state["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    state["half"] = _weight(rng, (3, 5)).to(torch.float16)
    return state, encodings, {"policy": {"version": 1}, "note": "golden"}


def golden_blob() -> bytes:
    """The packed bytes of :func:`golden_inputs`."""
    return pack(*golden_inputs())


def test_packing_the_golden_inputs_is_byte_identical() -> None:
    assert golden_blob() == GOLDEN.read_bytes()


def test_the_golden_file_still_loads() -> None:
    state, _, meta = golden_inputs()
    read_meta, read_state = unpack(GOLDEN.read_bytes())
    assert read_meta == meta and list(read_state) == list(state)
    again = unpack(golden_blob())[1]
    for name, tensor in read_state.items():
        assert tensor.dtype == again[name].dtype and tensor.shape == state[name].shape
        assert tensor.numpy().tobytes() == again[name].numpy().tobytes()


def test_pack_model_gives_the_state_the_file_decodes_to_for_every_encoding() -> None:
    """The state the search measures (built from the encoder's codes) is what a full decode of the file gives."""
    packed = pack_model(*golden_inputs())
    assert packed.blob == GOLDEN.read_bytes()
    _, decoded = unpack(packed.blob)
    assert list(packed.state) == list(decoded)
    for name, tensor in decoded.items():
        assert tensor.dtype == packed.state[name].dtype and tensor.shape == packed.state[name].shape
        assert tensor.numpy().tobytes() == packed.state[name].numpy().tobytes()
    verify_packed(packed)


@pytest.mark.parametrize("name", ["linear_huffman.weight", "kmeans_relative.weight", "fp32_bitmask.weight", "half"])
def test_verify_packed_names_a_tensor_the_bytes_do_not_give(name: str) -> None:
    packed = pack_model(*golden_inputs())
    changed = packed.state[name].clone()
    changed.view(-1)[0] = torch.nextafter(changed.view(-1)[0], torch.tensor(1.0, dtype=changed.dtype))
    with pytest.raises(PackFormatError, match=name.replace(".", r"\.")):
        verify_packed(replace(packed, state={**packed.state, name: changed}))
