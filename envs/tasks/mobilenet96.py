"""MobileNetV2 for ``(N, 3, 96, 96)`` inputs: a realistic input size, where latency is compute-bound.

The blocks are :mod:`envs.tasks.mobilenet`'s; only the stem differs: a stride-2 3x3 conv over three channels, as in
the paper, so the inverted residual stages run at 48, 24, 12 and 6 pixels. Kept apart from ``mobilenet.py``
because each built-in task's weight cache is keyed by the source file of its architecture.
"""

from __future__ import annotations

from torch import nn

from envs.tasks.mobilenet import MobileNetV2, conv_bn

STEM: int = 16
"""Output channels of the stem conv."""
STEM_STRIDE: int = 2
"""Stride of the stem conv: 96x96 inputs become 48x48 feature maps."""
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1),
)
"""Inverted residual stages as ``(expansion, channels, blocks, stride of the first block)``: 48, 24, 12, 6, 6 px."""
HEAD: int = 320
"""Output channels of the 1x1 head conv."""
IN_CHANNELS: int = 3
"""Input channels (RGB-shaped)."""


class MobileNetV2At96(MobileNetV2):
    """MobileNetV2 with a stride-2 stem over 3 channels: 216,266 parameters, 23.6M MACs per 3x96x96 image."""

    def __init__(
        self,
        num_classes: int = 10,
        stem: int = STEM,
        stages: tuple[tuple[int, int, int, int], ...] = STAGES,
        head: int = HEAD,
    ) -> None:
        super().__init__(num_classes, stem, stages, head, in_channels=IN_CHANNELS)
        self.stem = nn.Sequential(*conv_bn(IN_CHANNELS, stem, 3, STEM_STRIDE), nn.ReLU6())
