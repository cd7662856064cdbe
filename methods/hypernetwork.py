"""Static hypernetwork for CNNs (Ha, Dai and Le 2016, section 3.1): one small network generates the kernels of
many convolutions from per-slice embeddings, so a model stores the hypernetwork and the embeddings instead of the
kernels.

A generated layer's kernel ``[N_out * a, N_in * b, f, f]`` is tiled from ``a * b`` slices of
``[N_out, N_in, f, f]``; slice ``j`` has its own embedding ``z_j`` (``N_z`` values) and one generator, shared by
every slice of every generated layer, makes it in two linear steps (the paper's equations 2 and 3)::

    a_i^j = W_i z_j + B_i          (i = 1..N_in; W_i is d x N_z)
    K_i^j = W_out a_i^j + B_out    (W_out is f*f*N_out x d), the slice is the concatenation of the K_i^j.

:func:`attach` replaces convolutions of a model by :class:`GeneratedConv2d` layers that read their kernel from one
:class:`HyperBank` (attribute ``hyper_bank`` of the root), so the model's state holds the generator's and the
embeddings' values, trained end to end with the rest; the packed file then stores exactly those bytes. In eval mode
without gradients the generated kernels are computed once and reused until a parameter of the bank changes, which
is how such a model is deployed (materialise once, then run plain convolutions).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.discovery import hooked_pass

BANK = "hyper_bank"
"""Attribute of the root module that holds the :class:`HyperBank`."""


@dataclass(frozen=True)
class HyperSpec:
    """The shape of a static hypernetwork."""

    z_dim: int
    """``N_z``: values per slice embedding."""
    hidden: int
    """``d``: width of the generator's hidden vectors ``a_i``."""
    slice_in: int
    """``N_in``: input channels of one slice."""
    slice_out: int
    """``N_out``: output channels of one slice."""
    kernel: int
    """``f``: the (square) kernel size of every generated layer."""

    def generator_parameters(self) -> int:
        """Values of the shared generator: ``N_in (d N_z + d) + f^2 N_out (d + 1)``."""
        return self.slice_in * (self.hidden * self.z_dim + self.hidden) + (
            self.kernel**2 * self.slice_out * (self.hidden + 1))


class HyperNetwork(nn.Module):
    """The shared two-layer linear generator of kernel slices (equations 2 and 3)."""

    def __init__(self, spec: HyperSpec, fan_in: int) -> None:
        """Initialised so a generated kernel from unit-variance embeddings has He's variance ``2 / fan_in``.

        Args:
            spec: the hypernetwork's shape.
            fan_in: the typical ``in_channels * f * f`` of the generated layers.
        """
        super().__init__()
        self.spec = spec
        n_in, d, n_z, f, n_out = spec.slice_in, spec.hidden, spec.z_dim, spec.kernel, spec.slice_out
        self.w_in = nn.Parameter(torch.randn(n_in * d, n_z) / math.sqrt(n_z))
        self.b_in = nn.Parameter(torch.zeros(n_in * d))
        self.w_out = nn.Parameter(torch.randn(f * f * n_out, d) * math.sqrt(2.0 / (fan_in * d)))
        self.b_out = nn.Parameter(torch.zeros(f * f * n_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Kernel slices ``[S, N_out, N_in, f, f]`` for embeddings ``z`` of shape ``[S, N_z]``."""
        spec = self.spec
        a = F.linear(z, self.w_in, self.b_in).view(-1, spec.slice_in, spec.hidden)  # a_i^j
        k = F.linear(a, self.w_out, self.b_out)  # K_i^j: [S, N_in, f*f*N_out]
        return k.view(-1, spec.slice_in, spec.slice_out, spec.kernel, spec.kernel).transpose(1, 2)


class HyperBank(nn.Module):
    """The generator and every slice embedding of the generated layers (in the order of ``shapes``)."""

    def __init__(self, spec: HyperSpec, shapes: Sequence[tuple[int, int]], fan_in: int) -> None:
        """Args:
            spec: the hypernetwork's shape.
            shapes: ``(out_channels, in_channels)`` of each generated layer, multiples of the slice.
            fan_in: see :class:`HyperNetwork`.
        """
        super().__init__()
        self.net = HyperNetwork(spec, fan_in)
        self.shapes = tuple(shapes)
        self.counts = tuple((o // spec.slice_out) * (i // spec.slice_in) for o, i in self.shapes)
        self.z = nn.Parameter(torch.randn(sum(self.counts), spec.z_dim))
        self._cache: tuple[tuple[tuple[int, int], ...], list[torch.Tensor]] | None = None

    def _state(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def kernels(self) -> list[torch.Tensor]:
        """Every generated layer's kernel ``[out, in, f, f]``, in the order of ``shapes``; cached while no
        gradient is needed and no parameter changed."""
        frozen = not torch.is_grad_enabled() and not self.training
        if frozen and self._cache is not None and self._cache[0] == self._state():
            return self._cache[1]
        slices = self.net(self.z)
        spec, out = self.net.spec, []
        for (o, i), part in zip(self.shapes, torch.split(slices, self.counts), strict=True):
            grid = part.view(o // spec.slice_out, i // spec.slice_in, spec.slice_out, spec.slice_in,
                             spec.kernel, spec.kernel)
            out.append(grid.permute(0, 2, 1, 3, 4, 5).reshape(o, i, spec.kernel, spec.kernel).contiguous())
        self._cache = (self._state(), out) if frozen else None
        return out


class GeneratedConv2d(nn.Module):
    """A convolution whose kernel the root's :class:`HyperBank` generates; it keeps the original's stride,
    padding, dilation and bias."""

    def __init__(self, conv: nn.Conv2d, bank: HyperBank, index: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.index = index
        object.__setattr__(self, "_bank", bank)  # not a submodule: the bank's values have one key, at the root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with the generated kernel."""
        return F.conv2d(x, self._bank.kernels()[self.index], self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, generated={self.index}"


def eligible_convs(model: nn.Module, slice_in: int, slice_out: int) -> list[str]:
    """Convolutions a static hypernetwork of these slices can generate: ungrouped square ``k x k`` ``Conv2d`` with
    ``k > 1`` of the most common such size, channels multiples of the slice, at least 2 input channels."""
    convs = {name: m for name, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1
             and m.kernel_size[0] == m.kernel_size[1] > 1 and m.in_channels >= 2
             and m.in_channels % slice_in == 0 and m.out_channels % slice_out == 0}
    if not convs:
        return []
    size = Counter(m.kernel_size[0] for m in convs.values()).most_common(1)[0][0]
    return [name for name, m in convs.items() if m.kernel_size[0] == size]


def attach(model: nn.Module, z_dim: int, hidden: int, slice_in: int, slice_out: int,
           layers: Sequence[str] | None = None) -> HyperSpec:
    """Replaces convolutions of ``model`` (in place) by generated ones sharing one new :class:`HyperBank`.

    Args:
        model: the network; gets the attribute :data:`BANK`.
        z_dim, hidden, slice_in, slice_out: ``N_z``, ``d``, ``N_in``, ``N_out``.
        layers: the convolutions to generate; ``None`` = :func:`eligible_convs`.

    Returns:
        The hypernetwork's spec.

    Raises:
        ValueError: when no layer can be generated, a named layer is not an eligible convolution, or the model
            already has a :data:`BANK`.
    """
    if hasattr(model, BANK):
        raise ValueError(f"the model already has an attribute {BANK!r}")
    eligible = eligible_convs(model, slice_in, slice_out)
    names = list(eligible if layers is None else layers)
    if not names or any(name not in eligible for name in names):
        raise ValueError(f"a hypernetwork with {slice_out}x{slice_in} slices cannot generate {names or 'any layer'}; "
                         f"eligible convolutions: {', '.join(eligible) or 'none'}")
    modules = dict(model.named_modules())
    convs = [modules[name] for name in names]
    spec = HyperSpec(z_dim, hidden, slice_in, slice_out, convs[0].kernel_size[0])
    fan_in = sorted(c.in_channels * spec.kernel**2 for c in convs)[len(convs) // 2]
    bank = HyperBank(spec, [(c.out_channels, c.in_channels) for c in convs], fan_in)
    setattr(model, BANK, bank)
    for index, (name, conv) in enumerate(zip(names, convs, strict=True)):
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, GeneratedConv2d(conv, bank, index))
    return spec


def generated_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates per sample of the model's generated convolutions (the compressible layers' MACs leave
    them out: their kernels are not weights of their own); 0 for a model without any. Generating the kernels is
    a one-off cost at load, not counted."""
    generated = [m for m in model.modules() if isinstance(m, GeneratedConv2d)]
    if not generated:
        return 0
    total = 0

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kernel = module._bank.kernels()[module.index]  # noqa: SLF001 - the bank is the layer's own weight source
        total += out[0].numel() * kernel[0].numel()

    hooked_pass(model, input_shape, [m.register_forward_hook(count) for m in generated])
    return total
