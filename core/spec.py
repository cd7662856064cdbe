"""Description of one compressible layer, found by a real forward pass (leaf module)."""

from __future__ import annotations

from dataclasses import dataclass

LAYER_SPEC_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear", "embedding", "recurrent", "attention")
"""Every value :attr:`LayerSpec.kind` takes."""


@dataclass(frozen=True)
class LayerSpec:
    """Shape and cost of one compressible layer (a registered layer kind, ``methods/layer_kinds/``)."""

    name: str
    """Module path inside the model, e.g. ``features.0``."""
    kind: str
    """One of :data:`LAYER_SPEC_KINDS`: ``conv`` (any convolution), ``depthwise``, ``linear``, ``embedding``,
    ``recurrent`` (LSTM, GRU, RNN) or ``attention``."""
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
    factorisable: bool = True
    """Whether a low-rank factorisation applies to the layer (not to grouped or transposed convs, embeddings,
    recurrent or attention layers)."""
    tensors: tuple[tuple[int, int], ...] = ()
    """``(elements, rows)`` of each compressible weight tensor, in the kind's order (an LSTM has one input and one
    recurrent matrix per layer); empty means one tensor of ``params`` elements and ``out_channels`` rows."""

    @property
    def weight_tensors(self) -> tuple[tuple[int, int], ...]:
        """``(elements, rows)`` of each compressible weight tensor (see :attr:`tensors`)."""
        return self.tensors or ((self.params, self.out_channels),)
