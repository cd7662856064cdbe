"""Static int8 execution with PyTorch's x86 (fbgemm) backend, through FX graph-mode quantization.

The packed file keeps its own weight codes (1-8 bit, k-means or fp32); this module turns the decoded
model into one whose Conv2d/Linear layers (with their BatchNorm folded in and ReLUs fused) run as int8
kernels: weights per-channel symmetric int8, activations per-tensor uint8 with ranges observed on
calibration images. Conversion is deterministic, so the same file and calibration images give the
same int8 model every time.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

INT8_ENGINE = "x86"
"""Quantized engine (fbgemm-based); the default qconfig of this backend is used."""


class Int8ConversionError(ValueError):
    """The model cannot be converted to int8 (e.g. it cannot be traced by torch.fx)."""


def int8_supported() -> bool:
    """True when this PyTorch build has the x86 quantized engine."""
    return INT8_ENGINE in torch.backends.quantized.supported_engines


def to_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """An int8 copy of ``model`` (eval mode), calibrated on ``calibration`` inputs.

    Args:
        model: an fp32 model (not modified).
        calibration: representative inputs (a few hundred training images are plenty).
        batch_size: calibration batch size.

    Raises:
        Int8ConversionError: when the engine is missing or the model cannot be traced.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not int8_supported():
        raise Int8ConversionError(f"this PyTorch build lacks the {INT8_ENGINE} quantized engine")
    torch.backends.quantized.engine = INT8_ENGINE
    fp32 = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao announces its successor on every call
        try:
            prepared = prepare_fx(fp32, get_default_qconfig_mapping(INT8_ENGINE), example_inputs=(calibration[:1],))
        except Exception as exc:  # noqa: BLE001 - tracing arbitrary user code fails in many ways
            raise Int8ConversionError(f"cannot trace the model for int8 conversion: {exc}") from exc
        with torch.inference_mode():
            for start in range(0, len(calibration), batch_size):
                prepared(calibration[start : start + batch_size])
        return convert_fx(prepared).eval()
