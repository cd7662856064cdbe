"""Built-in architectures: LeNet-300-100, Caffe LeNet-5 and a small BatchNorm ResNet.

All take ``(N, 1, 28, 28)`` inputs and return ``(N, num_classes)`` logits. They are
plain ``nn.Module`` code (no functional tricks) so that dependency-graph pruners
such as torch-pruning can trace them.
"""

from __future__ import annotations

import torch
from torch import nn

RESNET_WIDTHS: tuple[int, int, int] = (40, 112, 240)
"""Channels of the three ResNet stages (the stem uses the first width)."""
RESNET_BLOCKS: tuple[int, int, int] = (1, 1, 2)
"""Residual blocks per ResNet stage."""
RESNET_STRIDES: tuple[int, int, int] = (1, 2, 2)
"""Stride of the first block of each ResNet stage."""


class LeNet300(nn.Module):
    """LeNet-300-100: an MLP 784-300-100-10 with ReLU (266,610 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 28x28 images."""
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv20-pool-conv50-pool-fc500-fc10 (431,080 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 28x28 images."""
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add (1x1 conv-BN shortcut if needed)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style CNN: stem conv, 3 stride-2 stages of basic blocks, GAP, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = RESNET_WIDTHS,
        blocks: tuple[int, int, int] = RESNET_BLOCKS,
        strides: tuple[int, int, int] = RESNET_STRIDES,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for width, count, stride in zip(widths, blocks, strides, strict=True):
            layers = [BasicBlock(channels, width, stride=stride)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(int(p.numel()) for p in model.parameters())
