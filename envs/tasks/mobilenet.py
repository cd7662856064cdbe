"""A MobileNetV2-style CNN on ``(N, 1, 28, 28)`` inputs: depthwise convs and inverted residuals.

Kept apart from ``models.py`` because each built-in task's weight cache is keyed by the source file
of its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

MOBILENET_STEM: int = 16
"""Output channels of the MobileNetV2 stem conv."""
MOBILENET_STAGES: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 40, 2, 2), (6, 80, 2, 1))
"""MobileNetV2 stages as ``(expansion, channels, blocks, stride of the first block)``."""
MOBILENET_HEAD: int = 320
"""Output channels of the MobileNetV2 1x1 head conv."""


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``kernel``x``kernel`` conv (same padding) followed by BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual add if shapes match.

    The expand conv is left out when ``expansion`` is 1, as in the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*conv_bn(in_channels, hidden), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += conv_bn(hidden, out_channels)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + block(x)`` when shapes match, else ``block(x)``."""
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2-style CNN: 3x3 stem, inverted residual stages, 1x1 head conv, GAP, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        stem: int = MOBILENET_STEM,
        stages: tuple[tuple[int, int, int, int], ...] = MOBILENET_STAGES,
        head: int = MOBILENET_HEAD,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, stem, 3), nn.ReLU6())
        blocks: list[nn.Module] = []
        channels = stem
        for expansion, width, count, stride in stages:
            for index in range(count):
                blocks.append(InvertedResidual(channels, width, stride if index == 0 else 1, expansion))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*conv_bn(channels, head), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))
