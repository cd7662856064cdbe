"""MNIST-5k at a realistic input size: each image upsampled to 96x96 (bilinear) and replicated to 3 channels.

The split is :func:`envs.tasks.data.mnist_splits`' (same samples, labels and normalisation by the MNIST mean and
standard deviation: bilinear interpolation is affine, so it keeps the normalisation). The 28x28 base is cached
there; the 96x96 tensors are built on each call (about 0.55 GB for all three splits) and not cached, so a caller
owns them and may modify them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from envs.tasks.data import Splits, mnist_splits

IMAGE_SIZE: int = 96
"""Height and width of the upsampled images."""
CHANNELS: int = 3
"""Channels of the upsampled images (copies of the grey channel)."""
SHAPE: tuple[int, int, int] = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
"""Shape of one sample."""


def upsample(images: torch.Tensor, size: int = IMAGE_SIZE, channels: int = CHANNELS) -> torch.Tensor:
    """``(N, 1, H, W)`` float images as contiguous ``(N, channels, size, size)``: bilinear, channel-replicated."""
    grey = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return grey.expand(-1, channels, -1, -1).contiguous()


def mnist96_splits() -> Splits:
    """The MNIST-5k split (train 3000 / val 1000 / test 1000) as float32 ``(3, 96, 96)`` images."""
    train, val, test = (TensorDataset(upsample(d.tensors[0]), d.tensors[1]) for d in mnist_splits())
    return train, val, test
