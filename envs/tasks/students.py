"""Shallow student networks for model compression by mimicry (Ba and Caruana 2014; Urban et al. 2016).

A student is trained to regress a trained teacher's logits (:func:`methods.objective.mimic_loss`) instead of its
labels; the built-in tasks ``<teacher>-mimic`` do that, and ``<teacher>-student`` train the same network on the
labels, the control. All take ``(N, 1, 28, 28)`` inputs and return ``(N, num_classes)`` logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from methods.streams import Data, epoch_batches


class ShallowMLP(nn.Module):
    """One hidden layer of 100 ReLU units (Ba and Caruana's shallow net; 79,510 parameters): LeNet-300-100's
    student."""

    def __init__(self, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 28x28 images."""
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class ShallowCNN(nn.Module):
    """One 5x5 convolution of 16 channels, a 4x4 max-pool and one hidden layer of 100 (Ba and Caruana's SNN-CNN;
    79,926 parameters): LeNet-5's student."""

    def __init__(self, channels: int = 16, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(4)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * 7 * 7, hidden)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 28x28 images."""
        x = self.flatten(self.pool(self.relu1(self.conv(x))))
        return self.fc2(self.relu2(self.fc1(x)))


class SmallCNN(nn.Module):
    """Two 3x3 convolutions of 32 and 64 channels with BatchNorm and 2x2 max-pools, and a linear read-out (50,282
    parameters, 40x fewer than the ResNet; Urban et al. find students need a few convolutions): the ResNet's
    student."""

    def __init__(self, widths: tuple[int, int] = (32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[1] * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 28x28 images."""
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


def teacher_targets(teacher: nn.Module, train: Data, batch_size: int = 256) -> TensorDataset:
    """The training inputs paired with the teacher's logits (eval mode, computed once): a student's mimic split."""
    inputs, logits = [], []
    teacher.eval()
    with torch.no_grad():
        for batch, _ in epoch_batches(train, batch_size):
            inputs.append(batch)
            logits.append(teacher(batch).float())
    if not inputs:
        raise ValueError("cannot mimic on an empty training split")
    return TensorDataset(torch.cat(inputs), torch.cat(logits))
