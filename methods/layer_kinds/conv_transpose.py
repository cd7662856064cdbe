"""``nn.ConvTranspose1d/2d/3d``: a ``conv`` layer (``depthwise`` with one group per input channel) that upsamples.

The weight is ``(in, out / groups, *kernel)``: dim 1 indexes the output channels, dim 0 the input channels. Each
input position multiplies every weight element once, so MACs are the weight elements times the input positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, CompressibleWeight, LayerKind

PLAIN = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
"""The plain transposed convolution of each number of spatial dims."""


class ConvTransposeKind(LayerKind):
    """Transposed convolutions of any dimension; not factorisable (the pipeline's factors are forward convs)."""

    module_type = nn.modules.conv._ConvTransposeNd

    def weights(self, module: nn.Module) -> tuple[CompressibleWeight, ...]:
        """The ``weight``, ``(in, out / groups, *kernel)``."""
        return (CompressibleWeight("weight", out_dim=1, in_dim=0),)

    def channels(self, module: nn.Module) -> Channels:
        """Input and output channels and groups."""
        return Channels(int(module.in_channels), int(module.out_channels), int(module.groups))

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Kernel and stride of the first spatial dim, sizes of the last; MACs over every input position."""
        params = int(module.weight.numel())
        spatial = len(module.kernel_size)
        channels = self.channels(module)
        return LayerSpec(
            name=name,
            kind="depthwise" if channels.depthwise else "conv",
            in_channels=channels.in_channels,
            out_channels=channels.out_channels,
            kernel=int(module.kernel_size[0]),
            stride=int(module.stride[0]),
            groups=channels.groups,
            input_hw=int(inputs.shape[-1]),
            output_hw=int(output.shape[-1]),
            params=params,
            macs=params * math.prod(int(d) for d in inputs.shape[-spatial:]),
        )

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
