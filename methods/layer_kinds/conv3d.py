"""``nn.Conv3d``: a ``conv`` layer over a volume, or ``depthwise`` with one group per input channel.

The Conv2d code applies unchanged: ``LayerSpec.kernel``/``stride`` are those of the first (depth) dim, ``input_hw``
and ``output_hw`` the sizes of the last dim (``LayerSpec`` has one map size), MACs the weight elements times every
output position of the volume.
"""

from __future__ import annotations

from torch import nn

from methods.layer_kinds.conv2d import Conv2dKind


class Conv3dKind(Conv2dKind):
    """3-d convolutions: weight ``(out, in / groups, kd, kh, kw)``; factorisable when ungrouped."""

    module_type = nn.Conv3d
