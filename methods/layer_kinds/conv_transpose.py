"""``nn.ConvTranspose1d/2d/3d``: a ``conv`` layer (``depthwise`` with one group per input channel) that upsamples.

The weight is ``(in, out / groups, *kernel)``: dim 1 indexes the output channels, dim 0 the input channels. Each
input position multiplies every weight element once, so MACs are the weight elements times the input positions.
Torch-Pruning removes an ungrouped transposed conv's output channels correctly (every pruning step is checked
anyway: a grouped one whose pruning fails is left whole by ``methods.structured``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from methods.layer_kinds.base import CompressibleWeight
from methods.layer_kinds.conv2d import Conv2dKind

PLAIN = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
"""The plain transposed convolution of each number of spatial dims."""


class ConvTransposeKind(Conv2dKind):
    """Transposed convolutions of any dimension; channels and spec as convolutions', not factorisable (the
    pipeline's factors are forward convolutions)."""

    module_type = nn.modules.conv._ConvTransposeNd

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """The ``weight``, ``(in, out / groups, *kernel)``."""
        return (CompressibleWeight("weight", out_dim=1, in_dim=0),)

    def mac_positions(self, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
        """Each input position (batched or not)."""
        return math.prod(int(d) for d in inputs.shape[-len(module.kernel_size):])

    def factorisable(self, module: nn.Module) -> bool:
        """Never."""
        return False

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A 3-to-4-channel 2-d layer doubling a 5x5 map."""
        return nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (3, 5, 5)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain transposed convolution of the same configuration and weights."""
        layer = PLAIN[len(module.kernel_size)](
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.output_padding, module.groups, module.bias is not None, module.dilation, module.padding_mode,
        )
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``conv_transpose``, channels, kernel, stride, padding, output padding, dilation, groups, bias, then the
        input's spatial sizes."""
        return (
            "conv_transpose", module.in_channels, module.out_channels, *module.kernel_size, *module.stride,
            *module.padding, *module.output_padding, *module.dilation, module.groups, module.bias is not None,
            *sample_shape[1:],
        )
