"""Execution on ONNX Runtime's CPU provider, at fp32 or static int8.

The decoded model is exported to ONNX (TorchScript exporter, opset 17, dynamic batch) and run by an
``onnxruntime.InferenceSession`` with all graph optimisations on. For int8 the export is quantized
statically by ONNX Runtime's own tool (QDQ format, per-channel symmetric int8 weights, per-tensor uint8
activations with ranges observed on calibration images), which the CPU provider fuses into integer
kernels. The session is wrapped as an ``nn.Module`` so that accuracy and latency are measured on it
exactly as on an eager model; it pickles as its ONNX bytes (e.g. to reach a Ray latency actor).
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import first_line
from core.spec import as_shape
from methods.examples import zeros_batch

OPSET = 17
INPUT, OUTPUT = "input", "output"
CALIBRATION_BATCH = 64


class OnnxConversionError(ValueError):
    """The model cannot be exported to ONNX or quantized by ONNX Runtime."""


def _feed(inputs: torch.Tensor) -> np.ndarray:
    """A batch as the exported graph's input takes it: int64 indices as they are, anything else as float32."""
    inputs = inputs.detach()
    return (inputs if inputs.dtype == torch.int64 else inputs.float()).contiguous().numpy()


class OnnxRuntimeModel(nn.Module):
    """An ONNX model run by ONNX Runtime, callable like the ``nn.Module`` it came from.

    Args:
        onnx_bytes: the serialised ONNX model.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, onnx_bytes: bytes, threads: int):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.threads = threads
        self._session: Any = None

    @property
    def session(self) -> Any:
        """The inference session (created on first use)."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            # idle worker threads sleep instead of spinning: spinning threads of one session compete with the
            # next session's (and the caller's) threads, which on 2 cores made paired timings swing by 2x
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: _feed(x)})[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state


def export_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` (eval mode) as ONNX bytes with a dynamic batch dimension.

    Raises:
        OnnxConversionError: when the exporter cannot handle the model.
    """
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)  # fused attention/encoder kernels have no ONNX export
        try:
            torch.onnx.export(
                model, (zeros_batch(input_shape),), buffer, dynamo=False, opset_version=OPSET,
                input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            )
        except Exception as exc:  # noqa: BLE001 - exporting arbitrary user code fails in many ways
            raise OnnxConversionError(f"cannot export the model to ONNX: {first_line(exc)}") from exc
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            model.train(was_training)
    return buffer.getvalue()


def quantize_onnx(onnx_bytes: bytes, calibration: torch.Tensor) -> bytes:
    """Static int8 (QDQ) quantization of an ONNX model by ONNX Runtime, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = _feed(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            starts = range(0, len(images), CALIBRATION_BATCH)
            self.batches = iter([{INPUT: images[s : s + CALIBRATION_BATCH]} for s in starts])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        advice = _DropQuantizerAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_static(
                str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds of errors
            raise OnnxConversionError(f"ONNX Runtime cannot quantize the model: {first_line(exc)}") from exc
        finally:
            logging.getLogger().removeFilter(advice)
        return target.read_bytes()


ADVICE = ("pre-processing", "Please exclude this node", "to be an initializer", "is out-of-range for weight")
"""Parts of the quantizer's advisory warnings: run its pre-processing (printed on every call; the model is already
exported as it wants it), and, on transformer graphs, which nodes it leaves in float (LayerNorm parameters,
attention biases computed in the graph) -- the converted model's accuracy is measured either way."""


class _DropQuantizerAdvice(logging.Filter):
    """Drops the quantizer's advisory warnings (:data:`ADVICE`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in ADVICE)


def to_onnx_runtime(
    model: nn.Module, input_shape: tuple[int, ...], threads: int, calibration: torch.Tensor | None = None
) -> OnnxRuntimeModel:
    """``model`` running on ONNX Runtime: fp32, or static int8 when ``calibration`` inputs are given.

    Raises:
        OnnxConversionError: when the model cannot be exported or quantized.
    """
    onnx_bytes = export_onnx(model, as_shape(input_shape))
    if calibration is not None:
        onnx_bytes = quantize_onnx(onnx_bytes, calibration)
    return OnnxRuntimeModel(onnx_bytes, threads)
