"""``onnxruntime`` and ``onnxruntime-int8``: the ONNX export on ONNX Runtime's CPU provider, fp32 or static int8
(``methods/onnx_runtime.py``)."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from envs.runtimes.base import Runtime, Timer
from methods.onnx_runtime import OnnxConversionError, to_onnx_runtime


class OnnxRuntime(Runtime):
    """ONNX Runtime, fp32 or (with ``int8``) quantized statically by its own tool (QDQ).

    A model the exporter cannot take (an operator without an ONNX mapping) or the quantizer refuses is refused.

    Args:
        int8: quantize the export statically, calibrated on the calibration inputs.
    """

    refuses = (OnnxConversionError,)

    def __init__(self, int8: bool) -> None:
        self.int8 = int8
        self.name = "onnxruntime-int8" if int8 else "onnxruntime"
        self.tolerance = 0.15 if int8 else 1e-4
        """fp32: graph optimisations reorder float sums (about 1e-7). int8: about 0.01-0.02 on small CNNs and MLPs
        on CPUs with VNNI; up to about 0.1 on AVX2-only CPUs, whose u8s8 kernels saturate."""

    def unavailable(self) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"

    def build(
        self, model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor
    ) -> nn.Module:
        return to_onnx_runtime(model, input_shape, threads, calibration if self.int8 else None)

    def call_cost_ms(self, example: torch.Tensor, threads: int, timer: Timer) -> float:
        """The time of an fp32 identity session on ``example``: input conversion, session dispatch, output copy."""
        return timer(to_onnx_runtime(nn.Identity(), tuple(example.shape[1:]), threads), example)
