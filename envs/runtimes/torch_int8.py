"""``torch-int8``: static int8 on PyTorch's x86 (fbgemm) backend, through FX graph mode (``methods/int8.py``)."""

from __future__ import annotations

import torch
from torch import nn

from envs.runtimes.base import Runtime
from methods.int8 import INT8_ENGINE, Int8ConversionError, int8_supported, to_int8


class TorchInt8(Runtime):
    """PyTorch static int8; a model torch.fx cannot trace (data-dependent control flow) is refused."""

    name = "torch-int8"
    int8 = True
    tolerance = 0.05
    """Per-channel int8 weights and per-tensor uint8 activations: about 0.01-0.03 on small CNNs and MLPs."""
    refuses = (Int8ConversionError,)

    def unavailable(self) -> str | None:
        return None if int8_supported() else f"this PyTorch build has no {INT8_ENGINE} quantized engine"

    def build(
        self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        return to_int8(model, calibration)

    def timing_case(self, layer: nn.Module, example: torch.Tensor, threads: int) -> tuple[nn.Module, torch.Tensor]:
        """The bare quantized kernel on an already quantized input, as it runs inside an int8 model (which
        quantizes once at its input and dequantizes once at its output, not around every layer)."""
        converted = self.convert(nn.Sequential(layer), tuple(example.shape[1:]), threads, example)
        kernel = converted.get_submodule("0")
        scale = float(getattr(converted, "0_input_scale_0"))
        zero_point = int(getattr(converted, "0_input_zero_point_0"))
        quantized = torch.quantize_per_tensor(example, scale, zero_point, torch.quint8)
        if quantized.dim() == 4:  # int8 convolutions produce (and so receive) channels-last tensors
            quantized = quantized.contiguous(memory_format=torch.channels_last)
        return kernel, quantized
