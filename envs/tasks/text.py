"""Character-level text from the installed Python standard library: real text that needs no download.

A fixed list of standard-library modules (source code and docstrings) is read in order, mapped onto a fixed
alphabet (printable ASCII; anything else becomes ``?``), cut into disjoint windows of ``SEQUENCE + 1``
characters, and a seeded random choice of windows forms train / val / test. Each sample is the window's
first ``SEQUENCE`` characters as indices, and its target the same window shifted by one: the next character
at every position. The text's SHA-256 is part of the splits' fingerprint, so another Python's library retrains
the cached model instead of reusing it.
"""

from __future__ import annotations

import functools
import string
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from core.errors import UsageError

MODULES: tuple[str, ...] = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py",
    "difflib.py", "enum.py", "fractions.py", "functools.py", "glob.py", "heapq.py", "inspect.py", "pathlib.py",
    "pprint.py", "random.py", "shutil.py", "statistics.py", "string.py", "subprocess.py", "textwrap.py",
    "typing.py", "zipfile.py",
)
"""Standard-library files the text comes from, in this order (missing ones are skipped)."""
ALPHABET: str = "".join(c for c in string.printable if c not in "\x0b\x0c")
"""The characters (printable ASCII: 98); every other character maps to ``?``."""
SEQUENCE = 64
"""Characters per sample."""
TEXT_SPLIT_SIZES: tuple[int, int, int] = (8000, 1000, 1000)
"""Windows in train / val / test."""
TEXT_SEED = 0
"""Seed of the choice of windows."""
MIN_CHARACTERS = 400_000
"""Text needed for the splits with room to spare; less means an unusual Python installation."""


@functools.lru_cache(maxsize=1)
def library_text() -> str:
    """The standard-library text of :data:`MODULES`, files joined by newlines.

    Raises:
        UsageError: when the installation has too little of it.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / name).read_text(encoding="utf-8", errors="replace") for name in MODULES if (root / name).is_file()]
    text = "\n".join(parts)
    if len(text) < MIN_CHARACTERS:
        raise UsageError(f"the Python standard library at {root} has only {len(text)} characters of the text the "
                         "charlstm task reads; use another task or a full Python installation")
    return text


def encode(text: str) -> np.ndarray:
    """Indices into :data:`ALPHABET` (``?`` for characters outside it)."""
    lookup = np.full(0x110000, ALPHABET.index("?"), dtype=np.int64)
    lookup[[ord(c) for c in ALPHABET]] = np.arange(len(ALPHABET))
    return lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]


def decode(indices: torch.Tensor) -> str:
    """The characters of a sequence of indices."""
    return "".join(ALPHABET[int(i)] for i in indices)


def text_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train, val, test) of ``(int64 (SEQUENCE,) characters, int64 (SEQUENCE,) next characters)``."""
    codes = encode(library_text())
    windows = len(codes) // (SEQUENCE + 1)
    chunks = torch.from_numpy(codes[: windows * (SEQUENCE + 1)].reshape(windows, SEQUENCE + 1).copy())
    order = torch.randperm(windows, generator=torch.Generator().manual_seed(TEXT_SEED))
    splits, start = [], 0
    for size in TEXT_SPLIT_SIZES:
        picked = chunks[order[start : start + size]]
        splits.append(TensorDataset(picked[:, :-1].clone(), picked[:, 1:].clone()))
        start += size
    train, val, test = splits
    return train, val, test
