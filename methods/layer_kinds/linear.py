"""``nn.Linear``: a ``linear`` layer, applied at every position of its input's leading dims."""

from __future__ import annotations

import torch
from torch import nn

from core.spec import LayerSpec
from methods.layer_kinds.base import Channels, LayerKind


class LinearKind(LayerKind):
    """Fully connected layers: weight ``(out, in)``; MACs are weight elements times positions."""

    module_type = nn.Linear

    def channels(self, module: nn.Module) -> Channels:
        """Input and output features."""
        return Channels(int(module.in_features), int(module.out_features))

    def spec(self, name: str, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> LayerSpec:
        """Features and MACs; kernel, stride, groups and sizes are 1."""
        params = int(module.weight.numel())
        positions = int(output[0].numel() // module.out_features) if output.dim() > 1 else 1
        return LayerSpec(
            name=name,
            kind="linear",
            in_channels=int(module.in_features),
            out_channels=int(module.out_features),
            kernel=1,
            stride=1,
            groups=1,
            input_hw=1,
            output_hw=1,
            params=params,
            macs=params * positions,
        )

    def factorisable(self, module: nn.Module) -> bool:
        """Always."""
        return True

    def factors(self, module: nn.Module, rank: int) -> nn.Sequential:
        """``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``."""
        return nn.Sequential(
            nn.Linear(module.in_features, rank, bias=False),
            nn.Linear(rank, module.out_features, bias=module.bias is not None),
        )

    def example(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A 6-to-5 layer applied at 2 positions."""
        return nn.Linear(6, 5), (2, 6)

    def standalone(self, module: nn.Module) -> nn.Module:
        """A plain linear layer of the same features and weights."""
        layer = nn.Linear(module.in_features, module.out_features, module.bias is not None)
        layer.load_state_dict(module.state_dict())
        return layer.eval()

    def timing_config(self, module: nn.Module, sample_shape: tuple[int, ...]) -> tuple[object, ...]:
        """``linear``, features, bias, then the input's leading (position) sizes."""
        return ("linear", module.in_features, module.out_features, module.bias is not None, *sample_shape[:-1])
