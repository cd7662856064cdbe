"""``nn.Conv2d``: a ``conv`` layer, or ``depthwise`` with one group per input channel.

The code reads the module's attributes only, so a kind for another ``nn.Conv*d`` can subclass
:class:`Conv2dKind` with its own ``module_type``.
"""

from __future__ import annotations

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, LayerKind


class Conv2dKind(LayerKind):
    """Convolutions: weight ``(out, in / groups, *kernel)``; MACs are weight elements times output positions."""

    module_type = nn.Conv2d

    def channels(self, module: nn.Module) -> Channels:
        """Input and output channels and groups."""
        return Channels(int(module.in_channels), int(module.out_channels), int(module.groups))

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Kernel and stride of the first spatial dim, map sizes of the last (square maps, as ``LayerSpec`` has it);
        MACs are the weight elements times :meth:`mac_positions`."""
        params = int(module.weight.numel())
        batched = output.dim() == module.weight.dim()
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
            output_hw=int(output.shape[-1]) if batched else 1,
            params=params,
            macs=params * self.mac_positions(module, inputs, output),
        )

    def mac_positions(self, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
        """Positions at which the layer multiplies every weight element once: each output position."""
        return int(output[0, 0].numel()) if output.dim() == module.weight.dim() else 1

    def factorisable(self, module: nn.Module) -> bool:
        """Ungrouped convolutions only (grouped and depthwise ones are left alone)."""
        return module.groups == 1

    def factors(self, module: nn.Module, rank: int) -> nn.Sequential:
        """A ``rank``-channel conv of the layer's kernel, stride, padding and dilation, then a 1x1 conv."""
        if not self.factorisable(module):
            raise ValueError(f"cannot factorise {type(module).__name__} (groups={module.groups})")
        conv = self.module_type
        return nn.Sequential(
            conv(
                module.in_channels, rank, module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, bias=False, padding_mode=module.padding_mode,
            ),
            conv(rank, module.out_channels, 1, bias=module.bias is not None),
        )

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A strided 3-to-4-channel conv with a 3-wide kernel, on a 9-wide input."""
        layer = self.module_type(3, 4, 3, stride=2, padding=1)
        return layer, (3,) + (9,) * (layer.weight.dim() - 2)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain convolution of the same configuration and weights."""
        layer = self.module_type(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, module.bias is not None, module.padding_mode,
        )
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``conv``, channels, kernel, stride, padding, dilation, groups, bias, then the input's spatial sizes."""
        return (
            "conv", module.in_channels, module.out_channels, *module.kernel_size, *module.stride, *module.padding,
            *module.dilation, module.groups, module.bias is not None, *sample_shape[1:],
        )
