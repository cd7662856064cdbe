"""Description of one compressible layer, found by a real forward pass (leaf module)."""

from __future__ import annotations

from collections.abc import Iterable
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


class SampleShape(tuple):
    """One input sample's shape (a tuple of sizes), and for inputs that are indices (token ids) their range.

    ``vocab == 0``: float inputs. ``vocab > 0``: int64 indices in ``[0, vocab)``, so that example and timing
    batches of the right dtype and range can be built from the shape alone (:func:`as_shape` keeps it).
    """

    vocab: int

    def __new__(cls, dims: Iterable[int], vocab: int = 0) -> SampleShape:
        shape = super().__new__(cls, (int(d) for d in dims))
        shape.vocab = int(vocab)
        return shape

    def __reduce__(self) -> tuple[type[SampleShape], tuple[tuple[int, ...], int]]:
        return SampleShape, (tuple(self), self.vocab)

    def __repr__(self) -> str:
        return f"SampleShape({tuple(self)!r}, vocab={self.vocab})" if self.vocab else repr(tuple(self))


def as_shape(value: Iterable[int]) -> SampleShape:
    """``value`` as a :class:`SampleShape` (its ``vocab`` kept when it has one; float inputs otherwise)."""
    return value if isinstance(value, SampleShape) else SampleShape(value, getattr(value, "vocab", 0))


def shape_on(override: Iterable[int] | None, input_shape: Iterable[int]) -> SampleShape:
    """The sample shape a device profile runs: its own ``input_shape`` override when it has one (keeping the task's
    index range), else the task's."""
    task = as_shape(input_shape)
    return SampleShape(override, task.vocab) if override else task
