"""ONNX Runtime execution: fp32 matches PyTorch, int8 is close, sessions pickle, and failures are clear."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from core.policy import LayerChoice, Policy
from envs.device import DeviceProfile
from envs.evaluator import Evaluator
from envs.runtimes import RUNTIMES, RuntimeConversionError, runnable_for
from envs.tasks import evaluate_accuracy, load_task
from search.cli import main

ORT = DeviceProfile(name="test-ort", runtime="onnxruntime", threads=1, batch=8, warmup=1, repeats=3)
ORT_INT8 = DeviceProfile(name="test-ort-int8", runtime="onnxruntime-int8", threads=1, batch=8, warmup=1, repeats=3)


class _SvdNet(nn.Module):
    """A model with an operator the ONNX exporter does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(self.fc(x.flatten(1)).view(x.shape[0], 10, 10))


@pytest.fixture(scope="module")
def task():
    return load_task("lenet5")


def test_fp32_session_matches_pytorch_and_pickles(task) -> None:
    images = task.val.tensors[0][:32]
    session = runnable_for(task.model, ORT, task.input_shape, task.train.tensors[0][:64])
    with torch.inference_mode():
        expected = task.model.eval()(images)
        assert torch.allclose(session(images), expected, atol=1e-4)
        assert torch.equal(pickle.loads(pickle.dumps(session))(images), session(images))


def test_int8_session_is_close_to_fp32_and_an_ort_device_measures_it(task) -> None:
    evaluator = Evaluator(task, ORT_INT8)
    policy = Policy.from_choices({"conv2": LayerChoice(keep=0.5), "fc1": LayerChoice(0.5, 6)})
    compressed = evaluator.compress(policy)
    result = evaluator.measure(compressed)
    runnable = evaluator.runnable(compressed.model)
    assert result.val_accuracy == evaluate_accuracy(runnable, task.val)
    assert abs(result.val_accuracy - evaluate_accuracy(compressed.model, task.val)) <= 0.015
    graph = runnable.onnx_bytes
    assert b"QuantizeLinear" in graph and b"DequantizeLinear" in graph  # quantized, not just exported
    assert result.latency_ms > 0 and result.size_bytes == len(compressed.blob)


def test_a_model_the_exporter_cannot_take_gets_one_clear_error(
    tmp_path: Path, write_file, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeConversionError, match="svdvals"):
        runnable_for(_SvdNet().eval(), ORT, (1, 28, 28), torch.randn(8, 1, 28, 28))
    source = write_file("svd.py", "import torch\nfrom torch import nn\n" + _SOURCE)
    weights = tmp_path / "svd.pt"
    torch.save(_SvdNet().state_dict(), weights)  # given weights: nothing is trained before the check
    out = tmp_path / "run"
    code = main(["--model", f"{source}:build", "--weights", str(weights), "--device", "cpu-ort-int8",
                 "--trials", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and "cpu-ort-int8" in err
    assert not out.exists()


_SOURCE = '''
class SvdNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 100)

    def forward(self, x):
        return torch.linalg.svdvals(self.fc(x.flatten(1)).view(x.shape[0], 10, 10))


def build():
    return SvdNet()
'''


def test_int8_conversion_prints_no_preprocessing_advice_and_leaves_logging_as_it_was(
    task, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from methods.onnx_runtime import export_onnx, quantize_onnx

    filters = list(logging.getLogger().filters)
    with caplog.at_level(logging.WARNING):
        int8 = quantize_onnx(export_onnx(task.model, task.input_shape), task.train.tensors[0][:64])
        logging.getLogger().warning("another pre-processing warning, after the conversion")
    assert b"QuantizeLinear" in int8
    assert [r.getMessage() for r in caplog.records if "pre-processing" in r.getMessage()] == [
        "another pre-processing warning, after the conversion"]
    assert logging.getLogger().filters == filters


def test_sessions_let_idle_threads_sleep(task) -> None:
    session = runnable_for(task.model, ORT, task.input_shape, task.train.tensors[0][:64]).session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("recurrent", [nn.LSTM, nn.GRU])
def test_recurrent_and_transformer_models_export_to_onnx_runtime(recurrent: type[nn.Module]) -> None:
    """Transformer layers export through their unfused path (the fused eval kernel has no ONNX form), recurrent
    layers as ONNX LSTM/GRU nodes; the fast-path setting is left as it was."""
    torch.manual_seed(0)

    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = recurrent(8, 16, batch_first=True)
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.encoder(self.rnn(x)[0]).mean(dim=1))

    model = Sequence().eval()
    before = torch.backends.mha.get_fastpath_enabled()
    runnable = RUNTIMES["onnxruntime"].convert(model, (5, 8), threads=1, calibration=torch.randn(8, 5, 8))
    assert torch.backends.mha.get_fastpath_enabled() == before
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        assert torch.allclose(runnable(x), model(x), atol=1e-5)


def test_int8_conversion_of_a_transformer_prints_no_quantizer_advice(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)).eval()
    with caplog.at_level(logging.WARNING):
        runnable = RUNTIMES["onnxruntime-int8"].convert(model, (5, 16), threads=1, calibration=torch.randn(32, 5, 16))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        assert (runnable(x) - model(x)).abs().max() < 0.5  # int8: close, not equal
