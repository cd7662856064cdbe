"""Description of one compressible layer, found by a real forward pass (leaf module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    """Shape and cost of one Conv2d or Linear layer."""

    name: str
    """Module path inside the model, e.g. ``features.0``."""
    kind: str
    """``conv``, ``depthwise`` or ``linear``."""
    in_channels: int
    """Input channels (conv) or input features (linear)."""
    out_channels: int
    """Output channels (conv) or output features (linear)."""
    kernel: int
    """Kernel height (1 for linear)."""
    stride: int
    """Stride (1 for linear)."""
    groups: int
    """Convolution groups (1 for linear)."""
    input_hw: int
    """Input feature-map height (1 for linear)."""
    output_hw: int
    """Output feature-map height (1 for linear)."""
    params: int
    """Weight elements (bias excluded)."""
    macs: int
    """Multiply-accumulates for one input sample."""
