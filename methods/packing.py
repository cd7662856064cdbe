"""The packed model file format; the reported model size is ``len(pack(...))``.

Layout::

    b"ACZ1" | u32 little-endian header length | zlib(JSON header) | payloads

The JSON header holds the caller's ``meta``, a CRC-32 of the payload and a table of
tensors in state order (name, dtype, shape, encoding, bits, index mode, k, kept
count, payload offset and segment lengths).
Every tensor's payload is a run of byte-aligned segments (lengths in the table):

* raw entries: ``[data]`` -- the tensor's bytes in its own dtype (little-endian).
* encoded weights: ``[index, values]`` for fp32 (kept values as float32), or
  ``[index, lo, step, codes]`` for 1-8 bits (float16 per-channel lo/step and the
  kept weights' codes bit-packed MSB-first at ``bits`` bits each).

The sparse index is the smallest of ``dense`` (nothing pruned, empty), ``bitmask``
(1 bit per element) or ``relative``: per kept weight, the number of pruned
positions since the previous kept one, as ``k``-bit symbols (2 <= k <= 8). Symbol
``2**k - 1`` is an escape meaning "skip ``2**k - 1`` positions, no weight here".
(``k = 1`` would be exactly a bitmask cut after the last kept weight, so it is
left to ``bitmask``.)
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods import quantization
from methods.quantization import FP32_BITS, QuantizedWeight

MAGIC = b"ACZ1"
FORMAT_VERSION = 1
MIN_RELATIVE_K = 2
MAX_RELATIVE_K = 8

_LENGTH = struct.Struct("<I")
_PREFIX_LEN = len(MAGIC) + _LENGTH.size
_CORRUPT = "not a packed model file or the file is corrupt"
_DECODE_ERRORS = (ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError)


class PackFormatError(ValueError):
    """The bytes are not a packed model or are corrupt."""


@dataclass(frozen=True)
class WeightEncoding:
    """How one weight tensor is compressed."""

    mask: torch.Tensor
    """Bool tensor of the weight's shape, True = kept."""
    bits: int
    """1-8 for per-channel linear codes, 32 for fp32 values."""


def pack(
    state: Mapping[str, torch.Tensor],
    encodings: Mapping[str, WeightEncoding],
    meta: Mapping[str, Any],
) -> bytes:
    """Serialise a state dict, compressing the weights named in ``encodings``.

    Args:
        state: Full model state dict (any dtypes).
        encodings: Mask and bit width per compressed weight; names must be in ``state``.
        meta: JSON-serialisable caller data, returned unchanged by :func:`unpack`.

    Returns:
        The packed file contents.

    Raises:
        ValueError: On an unknown name, a bad mask or bit width, or non-JSON ``meta``.
    """
    unknown = sorted(set(encodings) - set(state))
    if unknown:
        raise ValueError(f"encodings name tensors missing from the state: {unknown}")
    table: list[dict[str, Any]] = []
    segments: list[bytes] = []
    offset = 0
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        encoding = encodings.get(name)
        entry, parts = _encode_raw(tensor) if encoding is None else _encode_weight(tensor, encoding)
        lengths = [len(part) for part in parts]
        table.append({"name": name, **entry, "offset": offset, "lengths": lengths})
        segments.extend(parts)
        offset += sum(lengths)
    meta = dict(meta)
    try:
        meta_text = json.dumps(meta, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta is not JSON-serialisable: {error}") from error
    if json.loads(meta_text) != meta:
        raise ValueError("meta does not survive JSON unchanged (use lists, not tuples, and string keys)")
    text = json.dumps(
        {"version": FORMAT_VERSION, "crc32": _crc32(segments), "meta": meta, "tensors": table},
        separators=(",", ":"),
    )
    header = zlib.compress(text.encode("utf-8"), 9)
    return b"".join([MAGIC, _LENGTH.pack(len(header)), header, *segments])


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read packed bytes back into ``(meta, state)``.

    Encoded weights come back as float32 equal to
    ``quantization.quantize_dequantize(original, mask, bits)``; raw entries keep
    their dtype and values.

    Raises:
        PackFormatError: If ``blob`` is not a packed model or is corrupt.
    """
    view = memoryview(blob)
    if len(view) < _PREFIX_LEN or bytes(view[: len(MAGIC)]) != MAGIC:
        raise PackFormatError(f"{_CORRUPT} (bad magic)")
    (header_len,) = _LENGTH.unpack(view[len(MAGIC) : _PREFIX_LEN])
    payload_start = _PREFIX_LEN + header_len
    if payload_start > len(view):
        raise PackFormatError(f"{_CORRUPT} (truncated header)")
    try:
        header = json.loads(zlib.decompress(view[_PREFIX_LEN:payload_start]).decode("utf-8"))
        if header["version"] != FORMAT_VERSION:
            raise PackFormatError(f"{_CORRUPT} (unsupported format version {header['version']!r})")
        payload = view[payload_start:]
        if header["crc32"] != zlib.crc32(payload):
            raise PackFormatError(f"{_CORRUPT} (payload checksum mismatch)")
        state: dict[str, torch.Tensor] = {}
        expected_offset = 0
        for entry in header["tensors"]:
            lengths = [int(n) for n in entry["lengths"]]
            if entry["offset"] != expected_offset or min(lengths, default=0) < 0:
                raise PackFormatError(f"{_CORRUPT} (bad payload table)")
            end = expected_offset + sum(lengths)
            if end > len(payload):
                raise PackFormatError(f"{_CORRUPT} (truncated payload)")
            parts = _split(payload[expected_offset:end], lengths)
            decode = _decode_raw if entry["encoding"] == "raw" else _decode_weight
            state[str(entry["name"])] = decode(entry, parts)
            expected_offset = end
        if expected_offset != len(payload):
            raise PackFormatError(f"{_CORRUPT} (trailing bytes)")
        meta = header["meta"]
        if not isinstance(meta, dict):
            raise PackFormatError(f"{_CORRUPT} (bad meta)")
    except PackFormatError:
        raise
    except (zlib.error, UnicodeDecodeError, *_DECODE_ERRORS) as error:
        raise PackFormatError(f"{_CORRUPT} ({type(error).__name__}: {error})") from error
    return meta, state


def write_packed(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_packed(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a packed file written by :func:`write_packed`; see :func:`unpack`."""
    return unpack(Path(path).read_bytes())


# --- raw entries -----------------------------------------------------------------


def _encode_raw(tensor: torch.Tensor) -> tuple[dict[str, Any], list[bytes]]:
    """Table entry and payload of a tensor stored verbatim."""
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    entry = {"encoding": "raw", "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
    return entry, [data]


def _decode_raw(entry: Mapping[str, Any], parts: list[memoryview]) -> torch.Tensor:
    """Rebuild a verbatim tensor."""
    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise PackFormatError(f"{_CORRUPT} (unknown dtype {entry['dtype']!r})")
    shape = _shape(entry)
    (data,) = parts
    numel = _numel(shape)
    if len(data) != numel * dtype.itemsize:
        raise PackFormatError(f"{_CORRUPT} (raw size mismatch)")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return raw.view(dtype).reshape(shape)


# --- encoded weights -------------------------------------------------------------


def _encode_weight(tensor: torch.Tensor, encoding: WeightEncoding) -> tuple[dict[str, Any], list[bytes]]:
    """Table entry and payload segments of a pruned / quantized weight."""
    mask, bits = encoding.mask.detach().cpu(), int(encoding.bits)
    if mask.dtype != torch.bool or mask.shape != tensor.shape:
        raise ValueError(f"mask must be bool of shape {tuple(tensor.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not (1 <= bits <= 8 or bits == FP32_BITS):
        raise ValueError(f"bits must be 1-8 or {FP32_BITS}, got {bits}")
    if not tensor.is_floating_point():
        raise ValueError(f"only floating-point weights can be encoded, got {tensor.dtype}")
    flat_mask = mask.numpy().reshape(-1)
    kept = int(np.count_nonzero(flat_mask))
    positions = None if kept == flat_mask.size else np.flatnonzero(flat_mask)
    mode, k, index = ("dense", 0, b"") if positions is None else _encode_index(flat_mask.size, positions)
    entry = {
        "encoding": "fp32" if bits == FP32_BITS else "linear",
        "dtype": "float32",
        "shape": list(tensor.shape),
        "bits": bits,
        "index": mode,
        "k": k,
        "kept": kept,
    }
    if bits == FP32_BITS:
        values = tensor.to(torch.float32).numpy().reshape(-1)
        if positions is not None:
            values = values.take(positions)
        return entry, [index, values.astype("<f4").tobytes()]
    q = quantization.quantize(tensor, mask, bits, positions=positions)
    parts = [index, q.lo.astype("<f2").tobytes(), q.step.astype("<f2").tobytes(), _pack_bits(q.codes, bits)]
    return entry, parts


def _decode_weight(entry: Mapping[str, Any], parts: list[memoryview]) -> torch.Tensor:
    """Rebuild a float32 weight from its index and values."""
    shape = _shape(entry)
    numel, kept, bits = _numel(shape), int(entry["kept"]), int(entry["bits"])
    encoding = entry["encoding"]
    if encoding == "fp32" and bits == FP32_BITS:
        value_lengths = [4 * kept]
    elif encoding == "linear" and 1 <= bits <= 8:
        channels = quantization.channel_count(shape)
        value_lengths = [2 * channels, 2 * channels, _packed_len(kept, bits)]
    else:
        raise PackFormatError(f"{_CORRUPT} (bad encoding {encoding!r} / {bits} bits)")
    if not 0 <= kept <= numel or [len(part) for part in parts[1:]] != value_lengths:
        raise PackFormatError(f"{_CORRUPT} (value size mismatch)")
    flat_mask, positions = _decode_index(entry["index"], int(entry["k"]), parts[0], numel, kept)
    if encoding == "fp32":
        values = np.frombuffer(parts[1], dtype="<f4").astype(np.float32)
        if kept == numel:
            return torch.from_numpy(values).reshape(shape)
        out = np.zeros(numel, dtype=np.float32)
        out[np.flatnonzero(flat_mask) if positions is None else positions] = values
        return torch.from_numpy(out).reshape(shape)
    q = QuantizedWeight(
        codes=_unpack_bits(parts[3], bits, kept),
        lo=np.frombuffer(parts[1], dtype="<f2").astype(np.float16),
        step=np.frombuffer(parts[2], dtype="<f2").astype(np.float16),
        bits=bits,
        shape=shape,
    )
    return quantization.dequantize(q, torch.from_numpy(flat_mask).reshape(shape), positions=positions)


# --- sparse index ----------------------------------------------------------------


def _encode_index(numel: int, positions: np.ndarray) -> tuple[str, int, bytes]:
    """Smallest of the dense / bitmask / relative encodings of the kept flat positions."""
    kept = positions.size
    if kept == numel:
        return "dense", 0, b""
    bitmask_len = _packed_len(numel, 1)
    # A relative index needs >= 2 bits per kept weight; skip it when that already loses.
    if 2 * kept < 8 * bitmask_len:
        gaps = np.diff(positions, prepend=-1) - 1
        k, relative_len = _best_relative_k(gaps)
        if relative_len < bitmask_len:
            return "relative", k, _encode_relative(gaps, k)
    flat_mask = np.zeros(numel, dtype=np.bool_)
    flat_mask[positions] = True
    return "bitmask", 0, np.packbits(flat_mask).tobytes()


def _decode_index(mode: str, k: int, data: memoryview, numel: int, kept: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat keep-mask and, when already known, the kept positions; validated against ``kept``."""
    if mode == "dense":
        if len(data) or kept != numel:
            raise PackFormatError(f"{_CORRUPT} (bad dense index)")
        return np.ones(numel, dtype=np.bool_), None
    if mode == "bitmask":
        if len(data) != _packed_len(numel, 1):
            raise PackFormatError(f"{_CORRUPT} (bad bitmask size)")
        flat_mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).view(np.bool_)
        if np.count_nonzero(flat_mask) != kept:
            raise PackFormatError(f"{_CORRUPT} (index does not match the tensor)")
        return flat_mask, None
    if mode == "relative" and MIN_RELATIVE_K <= k <= MAX_RELATIVE_K:
        positions = _decode_relative(data, k, kept)
        if kept and positions[-1] >= numel:
            raise PackFormatError(f"{_CORRUPT} (index does not match the tensor)")
        flat_mask = np.zeros(numel, dtype=np.bool_)
        flat_mask[positions] = True
        return flat_mask, positions
    raise PackFormatError(f"{_CORRUPT} (unknown index mode {mode!r})")


def _best_relative_k(gaps: np.ndarray) -> tuple[int, int]:
    """Symbol width 2-8 minimising the relative index's bytes, and that byte count."""
    histogram = np.bincount(gaps) if gaps.size else np.zeros(1, dtype=np.int64)
    values = np.arange(histogram.size)
    best_k, best_len = MIN_RELATIVE_K, -1
    for k in range(MIN_RELATIVE_K, MAX_RELATIVE_K + 1):
        escapes = int(histogram @ (values // (2**k - 1)))
        length = _packed_len(gaps.size + escapes, k)
        if best_len < 0 or length < best_len:
            best_k, best_len = k, length
    return best_k, best_len


def _encode_relative(gaps: np.ndarray, k: int) -> bytes:
    """``k``-bit symbols: per gap, ``gap // E`` escapes ``E = 2**k - 1`` then ``gap % E``."""
    escape = 2**k - 1
    runs, remainders = np.divmod(gaps, escape)
    ends = np.cumsum(runs + 1) - 1
    symbols = np.full(int(ends[-1]) + 1 if ends.size else 0, escape, dtype=np.uint8)
    symbols[ends] = remainders
    return _pack_bits(symbols, k)


def _decode_relative(data: memoryview, k: int, kept: int) -> np.ndarray:
    """Flat positions from a relative index holding ``kept`` non-escape symbols."""
    symbols = _unpack_bits(data, k, len(data) * 8 // k)
    ends = np.flatnonzero(symbols != 2**k - 1)[:kept]
    if ends.size != kept or _packed_len(int(ends[-1]) + 1 if kept else 0, k) != len(data):
        raise PackFormatError(f"{_CORRUPT} (bad relative index)")
    advance = np.cumsum(symbols, dtype=np.int64)
    return advance[ends] + np.arange(kept)


# --- bit packing -----------------------------------------------------------------


def _packed_len(count: int, bits: int) -> int:
    """Bytes holding ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack uint8 values < 2**bits into an MSB-first bit stream (like ``np.packbits``)."""
    values = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return values.tobytes()
    if bits == 1:
        return np.packbits(values).tobytes()
    count = values.size
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint8)
    padded[:count] = values
    # Eight values per big-endian u64 word, one per byte; squeeze them together
    # (SWAR): 8-bit lanes -> 16 -> 32 -> 64, dropping the unused high bits.
    word = padded.view(">u8").astype(np.uint64)
    for lane, width in ((16, bits), (32, 2 * bits), (64, 4 * bits)):
        low = _lane_mask(lane // 2, lane)
        high = word & ~low
        high >>= np.uint64(lane // 2 - width)
        word &= low
        word |= high
    data = word.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - bits :]
    return data.tobytes()[: _packed_len(count, bits)]


def _unpack_bits(data: memoryview | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: the first ``count`` values as uint8."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < _packed_len(count, bits):
        raise PackFormatError(f"{_CORRUPT} (truncated bit stream)")
    if bits == 8:
        return raw[:count].copy()
    if bits == 1:
        return np.unpackbits(raw, count=count)
    groups = -(-count // 8)
    padded = np.zeros(groups * bits, dtype=np.uint8)
    used = min(raw.size, padded.size)
    padded[:used] = raw[:used]
    buffer = np.zeros((groups, 8), dtype=np.uint8)
    buffer[:, 8 - bits :] = padded.reshape(groups, bits)
    word = buffer.view(">u8").reshape(groups).astype(np.uint64)
    for lane, width in ((64, 4 * bits), (32, 2 * bits), (16, bits)):
        high = word << np.uint64(lane // 2 - width)
        high &= ~_lane_mask(lane // 2, lane)
        word &= _lane_mask(width, lane)
        word |= high
    return word.astype(">u8").view(np.uint8)[:count]


def _lane_mask(width: int, lane: int) -> np.uint64:
    """u64 with the low ``width`` bits of every ``lane``-bit lane set."""
    unit = (1 << width) - 1
    return np.uint64(sum(unit << shift for shift in range(0, 64, lane)))


# --- header helpers --------------------------------------------------------------


def _crc32(segments: list[bytes]) -> int:
    """CRC-32 of the concatenated segments."""
    crc = 0
    for segment in segments:
        crc = zlib.crc32(segment, crc)
    return crc


def _shape(entry: Mapping[str, Any]) -> tuple[int, ...]:
    """Validated tensor shape from a table entry."""
    shape = tuple(int(n) for n in entry["shape"])
    if any(n < 0 for n in shape):
        raise PackFormatError(f"{_CORRUPT} (bad shape)")
    return shape


def _numel(shape: tuple[int, ...]) -> int:
    """Element count of ``shape``."""
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _split(data: memoryview, lengths: list[int]) -> list[memoryview]:
    """Cut ``data`` into consecutive segments of the given lengths."""
    parts, start = [], 0
    for length in lengths:
        parts.append(data[start : start + length])
        start += length
    return parts
