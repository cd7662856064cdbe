"""Rebuilds runnable models from packed files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import UsageError
from envs.tasks import build_architecture
from methods.packing import PackFormatError, unpack
from methods.pipeline import decode


def load_model(path: str | Path) -> nn.Module:
    """Loads a packed model file (``*.acz``) as a runnable module in eval mode.

    The architecture is rebuilt from the file's source (built-in task or user factory),
    its structured-pruning history is replayed, then the decoded weights are loaded; the
    result computes exactly what was measured when the file was exported.

    Raises:
        UsageError: when the file is missing or is not a packed model.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    blob = path.read_bytes()
    try:
        meta, _ = unpack(blob)
    except PackFormatError as exc:
        raise UsageError(f"{path} is not a packed model file: {exc}") from exc
    with torch.inference_mode(False):  # rebuilding replays pruning, which traces with autograd
        return decode(blob, build_architecture(meta["source"]), replay=True)
