"""What runs on a device: the decoded model itself, or its conversion for the device profile's runtime."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from envs.device import DeviceProfile


class RuntimeConversionError(ValueError):
    """The model cannot be converted for the device's runtime."""


def runnable_for(
    model: nn.Module, device: DeviceProfile, input_shape: Sequence[int], calibration: torch.Tensor
) -> nn.Module:
    """``model`` as ``device`` runs it (an ``nn.Module`` in every case; ``model`` itself is not modified).

    Args:
        model: the decoded fp32 model.
        device: the profile; its ``runtime`` picks the conversion and its ``threads`` ONNX Runtime's threads.
        input_shape: one sample's shape (for ONNX export).
        calibration: representative inputs that set int8 activation ranges.

    Raises:
        RuntimeConversionError: when the runtime cannot take the model.
    """
    from methods.int8 import Int8ConversionError, to_int8
    from methods.onnx_runtime import OnnxConversionError, to_onnx_runtime

    shape = tuple(device.input_shape or input_shape)
    try:
        if device.runtime == "torch":
            return model
        if device.runtime == "torch-int8":
            return to_int8(model, calibration)
        return to_onnx_runtime(model, shape, device.threads, calibration if device.int8 else None)
    except (Int8ConversionError, OnnxConversionError) as exc:
        raise RuntimeConversionError(f"runtime {device.runtime!r} cannot run the model: {exc}") from exc
