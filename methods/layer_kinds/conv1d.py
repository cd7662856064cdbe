"""``nn.Conv1d``: a ``conv`` layer over a sequence, or ``depthwise`` with one group per input channel.

The Conv2d code applies unchanged: ``LayerSpec.kernel``/``stride`` are the only kernel and stride, ``input_hw`` and
``output_hw`` the input's and output's lengths, MACs the weight elements times output positions.
"""

from __future__ import annotations

from torch import nn

from methods.layer_kinds.conv2d import Conv2dKind


class Conv1dKind(Conv2dKind):
    """1-d convolutions: weight ``(out, in / groups, k)``; factorisable when ungrouped."""

    module_type = nn.Conv1d
