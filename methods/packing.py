"""The packed model file format; the reported model size is ``len(pack(...))``.

Layout::

    b"ACZ1" | u32 little-endian header length | zlib(JSON header) | payloads

The JSON header holds the caller's ``meta``, a CRC-32 of the payload and a table of
tensors in state order (name, dtype, shape, encoding, bits, index mode, k, kept
count, payload offset and segment lengths).
Every tensor's payload is a run of byte-aligned segments (lengths in the table):

* raw entries: ``[data]`` -- the tensor's bytes in its own dtype (little-endian).
* encoded weights: ``[index, values]`` for fp32 (kept values as float32);
  ``[index, *tables, codes]`` for 1-8 bit codes, where ``encoding`` names the quantizer
  (``methods/quantizers/``) that wrote the tables and reads them back: ``linear`` stores
  float16 per-channel lo/step, ``kmeans`` a float32 codebook of at most ``2**bits`` shared
  values per tensor (Deep Compression).

Codes are a symbol stream stored fixed-width (``bits`` bits each, MSB-first) or
Huffman-coded (code-length table + canonical codes), whichever is smaller
(``methods/symbol_coding.py``). The sparse index is the smallest of ``dense``
(nothing pruned, empty), ``bitmask`` (1 bit per element) or ``relative``: per kept
weight, the number of pruned positions since the previous kept one, as ``k``-bit
symbols (2 <= k <= 8), fixed-width or Huffman-coded. Symbol ``2**k - 1`` is an
escape meaning "skip ``2**k - 1`` positions, no weight here" (Deep Compression's
filler zero). Every table, codebook and header byte counts in the size.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods import huffman, symbol_coding
from methods.quantization import FP32_BITS
from methods.quantizers import QUANTIZERS, Codes
from methods.symbol_coding import packed_len

MAGIC = b"ACZ1"
FORMAT_VERSION = 1
MIN_RELATIVE_K = 2
MAX_RELATIVE_K = 8
RESERVED_ENCODINGS = ("raw", "fp32")
"""Table ``encoding`` values of the format itself; every other one names a quantizer."""
MAX_HEADER_BYTES = 64 * 2**20
"""Largest decompressed header accepted (a pruned LeNet-5 file's is about 3 kB, a pruned ResNet's 13 kB)."""
MAX_ELEMENTS = 2**32
"""Most tensor elements a file may declare in all (16 GiB as float32); larger files are refused, not allocated."""
MAX_DIMS = 16
"""Most dimensions of one tensor."""
RUNTIME_KEY = "runtime"
"""Optional ``meta`` entry: the device runtime the model was measured on (a registry name; absent in older files)."""
MAX_NAME_CHARS = 64
"""Longest runtime name a header may give."""
_RUNTIME_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME_CHARS}}}")

_LENGTH = struct.Struct("<I")
PREFIX_BYTES = len(MAGIC) + _LENGTH.size
"""Bytes before the compressed header: the magic and the header length."""
_CORRUPT = "not a packed model file or the file is corrupt"
_DECODE_ERRORS = (ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError)
_DTYPES = {str(value).removeprefix("torch."): value for value in vars(torch).values() if isinstance(value, torch.dtype)}
"""Raw entries' dtypes by name (looked up here, never as an attribute of ``torch``)."""


class PackFormatError(ValueError):
    """The bytes are not a packed model or are corrupt."""


@dataclass(frozen=True)
class WeightEncoding:
    """How one weight tensor is compressed."""

    mask: torch.Tensor
    """Bool tensor of the weight's shape, True = kept."""
    bits: int
    """1-8 for coded weights, 32 for fp32 values."""
    quantizer: str = "linear"
    """A registered quantizer (``methods/quantizers/``): ``linear``, ``kmeans``, ...; unused for fp32."""
    huffman: bool = True
    """Huffman-code the weight codes and the relative index where that is smaller."""


@dataclass(frozen=True)
class PackedModel:
    """A packed file and the state it decodes to."""

    blob: bytes
    """The file's bytes."""
    state: dict[str, torch.Tensor]
    """What :func:`unpack` returns for ``blob``, computed from the encoder's own codes and tables: only the
    lossless steps (entropy coding, bit packing, the sparse index) are not run backwards;
    :func:`verify_packed` runs them."""


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
    return _pack(state, encodings, meta, with_state=False).blob


def pack_model(
    state: Mapping[str, torch.Tensor],
    encodings: Mapping[str, WeightEncoding],
    meta: Mapping[str, Any],
) -> PackedModel:
    """:func:`pack`, plus the state the file decodes to, without decoding it (see :class:`PackedModel`)."""
    return _pack(state, encodings, meta, with_state=True)


def verify_packed(packed: PackedModel) -> None:
    """Decodes ``packed.blob`` in full and checks that it gives ``packed.state`` bit for bit.

    Raises:
        PackFormatError: naming the first tensor that differs.
    """
    _, decoded = unpack(packed.blob)
    if list(decoded) != list(packed.state):
        raise PackFormatError("the packed file does not decode to the packed state (tensor names differ)")
    for name, tensor in decoded.items():
        expected = packed.state[name]
        same = tensor.dtype == expected.dtype and tensor.shape == expected.shape and torch.equal(
            _bits(tensor), _bits(expected)
        )
        if not same:
            raise PackFormatError(f"the packed file does not decode to the packed value of {name!r}")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (so that -0.0 and 0.0, or two NaNs, compare as stored)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _pack(
    state: Mapping[str, torch.Tensor],
    encodings: Mapping[str, WeightEncoding],
    meta: Mapping[str, Any],
    *,
    with_state: bool,
) -> PackedModel:
    unknown = sorted(set(encodings) - set(state))
    if unknown:
        raise ValueError(f"encodings name tensors missing from the state: {unknown}")
    table: list[dict[str, Any]] = []
    segments: list[bytes] = []
    stored: dict[str, torch.Tensor] = {}
    offset = 0
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        encoding = encodings.get(name)
        if encoding is None:
            entry, parts = _encode_raw(tensor)
            value = tensor
        else:
            entry, parts, value = _encode_weight(tensor, encoding, with_state)
        if with_state:
            stored[name] = value
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
    return PackedModel(b"".join([MAGIC, _LENGTH.pack(len(header)), header, *segments]), stored)


@dataclass(frozen=True)
class Header:
    """A packed file's header, checked for shape but with no payload decoded."""

    meta: dict[str, Any]
    """The caller's ``meta`` given to :func:`pack`."""
    tensors: list[dict[str, Any]]
    """The table of tensors in state order (name, dtype, shape, encoding, payload offset and lengths, ...)."""
    payload_start: int
    """Offset of the first payload byte in the file."""

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, by name, in state order."""
        return {str(entry["name"]): _shape(entry) for entry in self.tensors}

    @property
    def runtime(self) -> str | None:
        """The device runtime the model was measured on (``meta["runtime"]``), ``None`` in files that predate it;
        a name of at most :data:`MAX_NAME_CHARS` letters, digits, ``.``, ``_`` or ``-`` (checked by
        :func:`read_header`), still to be looked up in the runtime registry by the caller."""
        return self.meta.get(RUNTIME_KEY)


def read_header(blob: bytes) -> Header:
    """The header of packed bytes, without decoding any tensor.

    Checks the magic, the header's size (at most ``MAX_HEADER_BYTES`` once decompressed), the format
    version, the payload checksum, and that the table has unique names, valid shapes, at most
    ``MAX_ELEMENTS`` elements in all and payload segments that tile the payload.

    Raises:
        PackFormatError: If ``blob`` is not a packed model, is corrupt or declares too much.
    """
    view = memoryview(blob)
    payload_start = PREFIX_BYTES + header_bytes(view)
    if payload_start > len(view):
        raise PackFormatError(f"{_CORRUPT} (truncated header)")
    try:
        header = json.loads(_inflate(view[PREFIX_BYTES:payload_start]).decode("utf-8"))
        if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
            version = header.get("version") if isinstance(header, dict) else None
            raise PackFormatError(f"{_CORRUPT} (unsupported format version {version!r})")
        payload = view[payload_start:]
        if header["crc32"] != zlib.crc32(payload):
            raise PackFormatError(f"{_CORRUPT} (payload checksum mismatch)")
        meta, tensors = header["meta"], header["tensors"]
        if not isinstance(meta, dict) or not _valid_runtime(meta.get(RUNTIME_KEY)):
            raise PackFormatError(f"{_CORRUPT} (bad meta)")
        if not isinstance(tensors, list) or not all(isinstance(entry, dict) for entry in tensors):
            raise PackFormatError(f"{_CORRUPT} (bad tensor table)")
        parsed = Header(meta, tensors, payload_start)
        shapes = parsed.shapes
        if len(shapes) != len(tensors):
            raise PackFormatError(f"{_CORRUPT} (a tensor name appears twice)")
        elements = sum(_numel(shape) for shape in shapes.values())
        if elements > MAX_ELEMENTS:
            raise PackFormatError(f"the file declares {elements} tensor elements, more than the {MAX_ELEMENTS} "
                                  "this loader accepts")
        offset = 0
        for entry in tensors:
            lengths = [int(n) for n in entry["lengths"]]
            if entry["offset"] != offset or min(lengths, default=0) < 0:
                raise PackFormatError(f"{_CORRUPT} (bad payload table)")
            offset += sum(lengths)
        if offset != len(payload):
            raise PackFormatError(f"{_CORRUPT} ({'truncated payload' if offset > len(payload) else 'trailing bytes'})")
    except PackFormatError:
        raise
    except (zlib.error, UnicodeDecodeError, RecursionError, *_DECODE_ERRORS) as error:
        raise PackFormatError(f"{_CORRUPT} ({type(error).__name__}: {error})") from error
    return parsed


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read packed bytes back into ``(meta, state)``.

    Encoded weights come back as float32 equal to their quantizer's stored weight
    (``methods.quantizers.stored_weight(original, mask, bits, quantizer)``); raw
    entries keep their dtype and values. Every tensor is allocated at the shape the header declares
    (see :func:`read_header` for the limits); a caller expecting given shapes checks
    ``read_header(blob).shapes`` first.

    Raises:
        PackFormatError: If ``blob`` is not a packed model or is corrupt.
    """
    header = read_header(blob)
    payload = memoryview(blob)[header.payload_start :]
    state: dict[str, torch.Tensor] = {}
    try:
        offset = 0
        for entry in header.tensors:
            lengths = [int(n) for n in entry["lengths"]]
            end = offset + sum(lengths)
            decode = _decode_raw if entry["encoding"] == "raw" else _decode_weight
            state[str(entry["name"])] = decode(entry, _split(payload[offset:end], lengths))
            offset = end
    except PackFormatError:
        raise
    except _DECODE_ERRORS as error:
        raise PackFormatError(f"{_CORRUPT} ({type(error).__name__}: {error})") from error
    return header.meta, state


def _inflate(data: memoryview) -> bytes:
    """The decompressed header, refused beyond ``MAX_HEADER_BYTES`` (a small file must not inflate to gigabytes)."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_HEADER_BYTES + 1)
    if len(text) > MAX_HEADER_BYTES:
        raise PackFormatError(f"the file's header inflates to more than {MAX_HEADER_BYTES} bytes, "
                              "more than this loader accepts")
    if not inflater.eof:
        raise PackFormatError(f"{_CORRUPT} (truncated header)")
    return text


def header_bytes(blob: bytes | memoryview) -> int:
    """Length of a packed file's compressed header (the file is ``PREFIX_BYTES + header + payloads``)."""
    if len(blob) < PREFIX_BYTES or bytes(blob[: len(MAGIC)]) != MAGIC:
        raise PackFormatError(f"{_CORRUPT} (bad magic)")
    return _LENGTH.unpack(blob[len(MAGIC) : PREFIX_BYTES])[0]


def weight_payload_bytes(tensor: torch.Tensor, encoding: WeightEncoding) -> int:
    """Exact payload bytes (index, tables, codes or values) of one encoded weight, as :func:`pack` stores it."""
    return sum(len(part) for part in _encode_weight(tensor.detach().cpu(), encoding)[1])


def index_bytes(mask: torch.Tensor, allow_huffman: bool = True) -> int:
    """Exact bytes of the sparse index :func:`pack` stores for a weight with this keep-mask."""
    flat_mask = mask.detach().cpu().numpy().reshape(-1)
    positions = None if flat_mask.all() else np.flatnonzero(flat_mask)
    return len(_encode_index(flat_mask.size, positions, allow_huffman).data)


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
    dtype = _DTYPES.get(str(entry["dtype"]))
    if dtype is None:
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


def _encode_weight(
    tensor: torch.Tensor, encoding: WeightEncoding, with_value: bool = False
) -> tuple[dict[str, Any], list[bytes], torch.Tensor | None]:
    """Table entry and payload segments of a pruned / quantized weight, and (``with_value``) the float32 weight
    they decode to, from the codes and tables before entropy coding."""
    mask, bits = encoding.mask.detach().cpu(), int(encoding.bits)
    if mask.dtype != torch.bool or mask.shape != tensor.shape:
        raise ValueError(f"mask must be bool of shape {tuple(tensor.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not (1 <= bits <= 8 or bits == FP32_BITS):
        raise ValueError(f"bits must be 1-8 or {FP32_BITS}, got {bits}")
    quantizer = QUANTIZERS[encoding.quantizer]
    if not tensor.is_floating_point():
        raise ValueError(f"only floating-point weights can be encoded, got {tensor.dtype}")
    flat_mask = mask.numpy().reshape(-1)
    kept = int(np.count_nonzero(flat_mask))
    positions = None if kept == flat_mask.size else np.flatnonzero(flat_mask)
    index = _encode_index(flat_mask.size, positions, encoding.huffman)
    entry = {
        "encoding": "fp32" if bits == FP32_BITS else encoding.quantizer,
        "dtype": "float32",
        "shape": list(tensor.shape),
        "bits": bits,
        "kept": kept,
        **index.entry,
    }
    if bits == FP32_BITS:
        values = tensor.to(torch.float32).numpy().reshape(-1)
        if positions is not None:
            values = values.take(positions)
        data = values.astype("<f4").tobytes()
        value = _scatter(np.frombuffer(data, dtype="<f4"), flat_mask, positions, tensor.shape) if with_value else None
        return entry, [index.data, data], value
    codes = quantizer.encode(tensor, mask, bits, positions)
    entry.update(codes.fields)
    entry["codes_coding"], stream = symbol_coding.encode_symbols(codes.symbols, bits, encoding.huffman)
    value = None
    if with_value:
        read_back = json.loads(json.dumps(entry, separators=(",", ":")))  # the entry as the file's header holds it
        value = quantizer.decode(Codes(codes.symbols, tuple(codes.tables), read_back), mask, bits)
    return entry, [index.data, *codes.tables, stream], value


def _decode_weight(entry: Mapping[str, Any], parts: list[memoryview]) -> torch.Tensor:
    """Rebuild a float32 weight from its index and values."""
    shape = _shape(entry)
    numel, kept, bits = _numel(shape), int(entry["kept"]), int(entry["bits"])
    encoding = entry["encoding"]
    if not 0 <= kept <= numel:
        raise PackFormatError(f"{_CORRUPT} (bad kept count)")
    quantizer = None
    if encoding == "fp32" and bits == FP32_BITS:
        expected: list[int | None] = [4 * kept]
    elif encoding not in RESERVED_ENCODINGS and encoding in QUANTIZERS and 1 <= bits <= 8:
        quantizer = QUANTIZERS[encoding]
        try:
            expected = [*quantizer.table_sizes(entry, shape, bits), None]
        except ValueError as error:
            raise PackFormatError(f"{_CORRUPT} (bad {encoding} entry: {error})") from error
    else:
        raise PackFormatError(f"{_CORRUPT} (bad encoding {encoding!r} / {bits} bits)")
    sizes_ok = len(parts) == len(expected) + 1 and all(
        n is None or len(p) == n for p, n in zip(parts[1:], expected, strict=True)
    )
    if not sizes_ok:
        raise PackFormatError(f"{_CORRUPT} (value size mismatch)")
    flat_mask, positions = _decode_index(entry, parts[0], numel, kept)
    if quantizer is None:
        return _scatter(np.frombuffer(parts[1], dtype="<f4"), flat_mask, positions, shape)
    try:
        count = kept if quantizer.stores_codes else 0
        codes = symbol_coding.decode_symbols(str(entry["codes_coding"]), parts[-1], bits, count)
    except symbol_coding.StreamError as error:
        raise PackFormatError(f"{_CORRUPT} ({error})") from error
    mask = torch.from_numpy(flat_mask).reshape(shape)
    try:
        return quantizer.decode(Codes(codes, tuple(parts[1:-1]), entry), mask, bits)
    except ValueError as error:
        raise PackFormatError(f"{_CORRUPT} ({error})") from error


def _scatter(
    values: np.ndarray, flat_mask: np.ndarray, positions: np.ndarray | None, shape: tuple[int, ...]
) -> torch.Tensor:
    """A float32 tensor of ``shape`` holding ``values`` at the kept positions and zeros elsewhere."""
    values = values.astype(np.float32)
    if values.size == flat_mask.size:
        return torch.from_numpy(values).reshape(shape)
    out = np.zeros(flat_mask.size, dtype=np.float32)
    out[np.flatnonzero(flat_mask) if positions is None else positions] = values
    return torch.from_numpy(out).reshape(shape)


# --- sparse index ----------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """A sparse index segment and the table fields that describe it."""

    entry: dict[str, Any]
    data: bytes


def _encode_index(numel: int, positions: np.ndarray | None, allow_huffman: bool) -> _Index:
    """Smallest of the dense / bitmask / relative (fixed or Huffman) encodings of the kept positions."""
    if positions is None:
        return _Index({"index": "dense"}, b"")
    bitmask_len = packed_len(numel, 1)
    gaps = np.diff(positions, prepend=-1) - 1
    size, k, coding = _best_relative(gaps, allow_huffman)
    if size < bitmask_len:  # the relative index is only built when it wins
        symbols = _relative_symbols(gaps, k)
        coding, data = symbol_coding.encode_symbols(symbols, k, allow_huffman=coding == symbol_coding.HUFFMAN)
        entry = {"index": "relative", "k": k, "index_coding": coding, "index_symbols": int(symbols.size)}
        return _Index(entry, data)
    flat_mask = np.zeros(numel, dtype=np.bool_)
    flat_mask[positions] = True
    return _Index({"index": "bitmask"}, np.packbits(flat_mask).tobytes())


def _decode_index(entry: Mapping[str, Any], data: memoryview, numel: int, kept: int) -> tuple[np.ndarray, Any]:
    """Flat keep-mask and, when already known, the kept positions; validated against ``kept``."""
    mode = entry["index"]
    if mode == "dense":
        if len(data) or kept != numel:
            raise PackFormatError(f"{_CORRUPT} (bad dense index)")
        return np.ones(numel, dtype=np.bool_), None
    if mode == "bitmask":
        if len(data) != packed_len(numel, 1):
            raise PackFormatError(f"{_CORRUPT} (bad bitmask size)")
        flat_mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).view(np.bool_)
        if np.count_nonzero(flat_mask) != kept:
            raise PackFormatError(f"{_CORRUPT} (index does not match the tensor)")
        return flat_mask, None
    k = int(entry.get("k", 0))
    if mode == "relative" and MIN_RELATIVE_K <= k <= MAX_RELATIVE_K:
        count = int(entry["index_symbols"])
        if not 0 <= count <= kept + numel // (2**k - 1):  # a symbol per kept weight, an escape per 2**k - 1 gaps
            raise PackFormatError(f"{_CORRUPT} (bad relative index length)")
        try:
            symbols = symbol_coding.decode_symbols(str(entry["index_coding"]), data, k, count)
        except symbol_coding.StreamError as error:
            raise PackFormatError(f"{_CORRUPT} ({error})") from error
        ends = np.flatnonzero(symbols != 2**k - 1)
        if ends.size != kept or (kept and ends[-1] != symbols.size - 1):
            raise PackFormatError(f"{_CORRUPT} (bad relative index)")
        positions = np.cumsum(symbols, dtype=np.int64)[ends] + np.arange(kept)
        if kept and positions[-1] >= numel:
            raise PackFormatError(f"{_CORRUPT} (index does not match the tensor)")
        flat_mask = np.zeros(numel, dtype=np.bool_)
        flat_mask[positions] = True
        return flat_mask, positions
    raise PackFormatError(f"{_CORRUPT} (unknown index mode {mode!r})")


def _symbol_counts(gap_histogram: np.ndarray, k: int) -> np.ndarray:
    """Counts of the ``k``-bit relative-index symbols, from the histogram of gaps."""
    escape = 2**k - 1
    values = np.arange(gap_histogram.size)
    counts = np.bincount(values % escape, weights=gap_histogram, minlength=2**k).astype(np.int64)
    counts[escape] += int(gap_histogram @ (values // escape))
    return counts


def _best_relative(gaps: np.ndarray, allow_huffman: bool) -> tuple[int, int, str]:
    """Bytes, symbol width 2-8 and coding (fixed or Huffman) of the smallest relative index."""
    histogram = np.bincount(gaps) if gaps.size else np.zeros(1, dtype=np.int64)
    best: tuple[int, int, str] | None = None
    for k in range(MIN_RELATIVE_K, MAX_RELATIVE_K + 1):
        counts = _symbol_counts(histogram, k)
        fixed = packed_len(int(counts.sum()), k)
        if best is None or fixed < best[0]:
            best = (fixed, k, symbol_coding.FIXED)
        if allow_huffman and huffman.size_lower_bound(counts) < best[0]:  # else Huffman cannot win at this k
            lengths = huffman.code_lengths(counts)
            huff = huffman.table_size(lengths) + -(-huffman.encoded_bits(counts, lengths) // 8)
            if huff < best[0]:
                best = (huff, k, symbol_coding.HUFFMAN)
    assert best is not None
    return best


def _relative_symbols(gaps: np.ndarray, k: int) -> np.ndarray:
    """``k``-bit symbols: per gap, ``gap // E`` escapes ``E = 2**k - 1`` then ``gap % E``."""
    escape = 2**k - 1
    runs, remainders = np.divmod(gaps, escape)
    ends = np.cumsum(runs + 1) - 1
    symbols = np.full(int(ends[-1]) + 1 if ends.size else 0, escape, dtype=np.uint8)
    symbols[ends] = remainders
    return symbols


# --- header helpers --------------------------------------------------------------


def _valid_runtime(name: Any) -> bool:
    """True for an absent runtime or a short plain name (``torch-int8``, ``onnxruntime``, ...)."""
    return name is None or (isinstance(name, str) and _RUNTIME_NAME.fullmatch(name) is not None)


def _crc32(segments: list[bytes]) -> int:
    """CRC-32 of the concatenated segments."""
    crc = 0
    for segment in segments:
        crc = zlib.crc32(segment, crc)
    return crc


def _shape(entry: Mapping[str, Any]) -> tuple[int, ...]:
    """Validated tensor shape from a table entry."""
    shape = tuple(int(n) for n in entry["shape"])
    if len(shape) > MAX_DIMS or any(not 0 <= n <= MAX_ELEMENTS for n in shape):
        raise PackFormatError(f"{_CORRUPT} (bad shape)")
    return shape


def _numel(shape: tuple[int, ...]) -> int:
    """Element count of ``shape``."""
    return math.prod(shape)


def _split(data: memoryview, lengths: list[int]) -> list[memoryview]:
    """Cut ``data`` into consecutive segments of the given lengths."""
    parts, start = [], 0
    for length in lengths:
        parts.append(data[start : start + length])
        start += length
    return parts
