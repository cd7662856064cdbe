"""Built-in architectures whose convolutions a static hypernetwork generates (Ha, Dai and Le 2016), the tasks
``<net>-hyper``: the teacher task's network with its eligible kernels replaced by one shared generator and per-slice
embeddings (:mod:`methods.hypernetwork`), trained end to end on the labels as the paper trains it."""

from __future__ import annotations

from types import ModuleType

from envs.tasks.models import LeNet5, ResNet
from methods import hypernetwork
from methods.hypernetwork import attach


class HyperLeNet5(LeNet5):
    """LeNet-5 with ``conv2`` (20 -> 50, 5x5: 25,000 weights) generated from one 4-value embedding through a
    generator of ``d = 4`` (6,654 values with the embedding), the paper's MNIST setting (``N_z = d = 4``, the
    whole kernel one slice). ``conv1`` has one input channel and stays a plain convolution."""

    code_modules: tuple[ModuleType, ...] = (hypernetwork,)
    """Code its cached weights depend on besides its classes' files."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        attach(self, z_dim=4, hidden=4, slice_in=20, slice_out=50)


class HyperResNet(ResNet):
    """The ResNet task's network with every 3x3 convolution after the stem (1,979,136 weights) generated from
    8x8x3x3 slices, ``N_z = 16``, ``d = 64`` (3,436 embeddings and a 13,384-value generator: 36x fewer values on
    those kernels, the ratio of the paper's ResNet setting). The stem, the 1x1 shortcuts and the classifier stay."""

    code_modules: tuple[ModuleType, ...] = (hypernetwork,)
    """Code its cached weights depend on besides its classes' files."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        attach(self, z_dim=16, hidden=64, slice_in=8, slice_out=8)
