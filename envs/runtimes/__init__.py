"""Device runtimes: what runs on a device, the decoded model itself or its conversion for the profile's runtime.

Every runtime is a :class:`Runtime` in :data:`RUNTIMES` (see ``envs/runtimes/base.py``). The built-in ones:

* ``torch``: eager fp32 PyTorch (``eager.py``);
* ``torch-int8``: static int8 on PyTorch's x86 backend (``torch_int8.py``, ``methods/int8.py``);
* ``onnxruntime`` / ``onnxruntime-int8``: the ONNX export on ONNX Runtime's CPU provider, fp32 or static int8
  (``ort.py``, ``methods/onnx_runtime.py``).

A new runtime is one module defining a :class:`Runtime` plus one :func:`register` line below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from core.spec import shape_on
from envs.runtimes.base import RUNTIMES, Runtime, RuntimeConversionError, Timer, output_error, register
from envs.runtimes.eager import TorchEager
from envs.runtimes.ort import OnnxRuntime
from envs.runtimes.torch_int8 import TorchInt8

__all__ = [
    "RUNTIMES", "Runtime", "RuntimeConversionError", "RuntimeSettings", "Timer", "output_error", "register",
    "runnable_for",
]

register(TorchEager())
register(TorchInt8())
register(OnnxRuntime(int8=False))
register(OnnxRuntime(int8=True))


class RuntimeSettings(Protocol):
    """What :func:`runnable_for` reads from a device profile (``envs.profile.DeviceProfile``)."""

    @property
    def runtime(self) -> str: ...

    @property
    def threads(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...] | None: ...


def runnable_for(
    model: nn.Module, device: RuntimeSettings, input_shape: Sequence[int], calibration: torch.Tensor
) -> nn.Module:
    """``model`` as ``device`` runs it (an ``nn.Module`` in every case; ``model`` itself is not modified).

    Args:
        model: the decoded fp32 model.
        device: the profile; its ``runtime`` picks the conversion and its ``threads`` ONNX Runtime's threads.
        input_shape: one sample's shape (for ONNX export); the profile's own ``input_shape`` wins.
        calibration: representative inputs that set int8 activation ranges.

    Raises:
        RuntimeConversionError: when the runtime cannot take the model.
    """
    shape = shape_on(device.input_shape, input_shape)
    return RUNTIMES[device.runtime].convert(model, shape, device.threads, calibration)
