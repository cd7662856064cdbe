"""Index inputs, per-position and float targets, and the charlstm task's data (no training here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import UsageError
from core.policy import LayerChoice, Policy
from core.spec import SampleShape, as_shape
from envs.tasks.charlstm import CharLSTM
from envs.tasks.data import materialize, sample_shape
from envs.tasks.registry import _checked_metric
from envs.tasks.text import ALPHABET, SEQUENCE, TEXT_SPLIT_SIZES, decode, text_splits
from envs.tasks.user import check_fit
from methods.discovery import discover_layers
from methods.examples import random_batch, zeros_batch
from methods.pipeline import compress, input_shape_of
from methods.pipeline import decode as decode_packed


def test_text_splits_are_reproducible_disjoint_and_shifted_by_one() -> None:
    first, second = text_splits(), text_splits()
    for a, b, size in zip(first, second, TEXT_SPLIT_SIZES, strict=True):
        assert torch.equal(a.tensors[0], b.tensors[0]) and a.tensors[0].shape == (size, SEQUENCE)
        inputs, targets = a.tensors
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # the target is the next character
        assert int(inputs.max()) < len(ALPHABET)
    windows = [{tuple(row.tolist()) for row in split.tensors[0]} for split in first]
    # disjoint windows of the text; the same 64 characters can recur in it (runs of indentation, repeated lines)
    assert len(windows[0] & windows[2]) <= 0.01 * len(windows[2]) and len(windows[1] & windows[2]) <= 5
    assert "def " in "".join(decode(row) for row in first[0].tensors[0][:200])


def test_sample_shape_carries_the_index_range_through_copies_and_batches() -> None:
    shape = sample_shape(text_splits())
    assert tuple(shape) == (SEQUENCE,) and 1 < shape.vocab <= len(ALPHABET)
    assert as_shape(shape) is shape and as_shape((1, 28, 28)).vocab == 0
    batch = random_batch(shape, 5, torch.Generator().manual_seed(0))
    assert batch.dtype == torch.int64 and batch.shape == (5, SEQUENCE) and int(batch.max()) < shape.vocab
    assert zeros_batch(shape).dtype == torch.int64 and zeros_batch((3,)).dtype == torch.float32


def test_a_language_model_with_index_inputs_is_compressed_and_its_file_keeps_the_input_range() -> None:
    torch.manual_seed(0)
    model = CharLSTM(vocab=20, embedding=8, hidden=16).eval()
    shape = SampleShape((12,), vocab=20)
    assert [(s.name, s.kind) for s in discover_layers(model, shape)] == [
        ("embed", "embedding"), ("rnn", "recurrent"), ("head", "linear")]
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=4) for name in ("embed", "rnn", "head")})
    compressed = compress(model, policy, input_shape=shape, source={"task": "charlstm"})
    assert compressed.meta["input_vocab"] == 20 and input_shape_of(compressed.meta) == shape
    assert input_shape_of(compressed.meta).vocab == 20
    x = torch.randint(0, 20, (3, 12))
    rebuilt = decode_packed(compressed.blob, CharLSTM(vocab=20, embedding=8, hidden=16))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.model(x))


def test_data_keeps_index_inputs_and_takes_per_position_and_float_targets() -> None:
    tokens = materialize(TensorDataset(torch.randint(0, 9, (4, 6)), torch.randint(0, 9, (4, 6), dtype=torch.int32)),
                         "d")
    assert tokens.tensors[0].dtype == torch.int64 and tokens.tensors[1].shape == (4, 6)
    regression = materialize([(torch.randn(3), torch.randn(2)) for _ in range(5)], "d")
    assert regression.tensors[1].dtype == torch.float32 and regression.tensors[1].shape == (5, 2)
    with pytest.raises(UsageError, match="negative index input"):
        materialize(TensorDataset(torch.tensor([[0, -1]]), torch.tensor([0])), "d")
    with pytest.raises(UsageError, match="one shape and dtype"):
        materialize([(torch.randn(3), 1), (torch.randn(3), torch.randn(2))], "d")


class _Regressor(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


def test_check_fit_takes_sequence_scores_and_regression_outputs() -> None:
    splits = text_splits()
    model = CharLSTM(embedding=4, hidden=8)
    assert check_fit(model, splits) == len(ALPHABET)
    floats = TensorDataset(torch.randn(8, 3), torch.randn(8, 2))
    assert check_fit(_Regressor(), (floats, floats, floats)) == 0
    wrong = TensorDataset(torch.randn(8, 3), torch.randn(8, 3))
    with pytest.raises(UsageError, match="regression model must return outputs of the targets' shape"):
        check_fit(_Regressor(), (wrong, wrong, wrong))
    labels = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8, 5)))
    with pytest.raises(UsageError, match=r"class scores of shape \(8, 5\) \+ \(C,\)"):
        check_fit(_Regressor(), (labels, labels, labels))


def test_a_metric_must_fit_the_targets() -> None:
    ints = (TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)),) * 3
    floats = (TensorDataset(torch.zeros(2, 3), torch.zeros(2, 1)),) * 3
    assert _checked_metric("bpc", ints) == "bpc" and _checked_metric("mse", floats) == "mse"
    with pytest.raises(UsageError, match="metric 'mse' cannot score integer .* use accuracy or bpc"):
        _checked_metric("mse", ints)
    with pytest.raises(UsageError, match="unknown metric 'f1'; choose one of accuracy, bpc, mse"):
        _checked_metric("f1", floats)


def test_other_integer_dtypes_are_cast_like_before() -> None:
    """uint8 images become float inputs (only int64 inputs are token ids); int32 labels and float64 targets are
    accepted sample by sample."""
    images = [(torch.randint(0, 255, (1, 4, 4), dtype=torch.uint8), torch.tensor(i % 3, dtype=torch.int32))
              for i in range(6)]
    data = materialize(images, "d")
    assert data.tensors[0].dtype == torch.float32 and data.tensors[1].dtype == torch.int64
    assert sample_shape((data, data, data)).vocab == 0
    fast = materialize(TensorDataset(torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int16)), "d")
    assert fast.tensors[0].dtype == torch.float32 and fast.tensors[1].dtype == torch.int64
    doubles = materialize([(torch.randn(3), torch.randn(2, dtype=torch.float64)) for _ in range(4)], "d")
    assert doubles.tensors[1].dtype == torch.float32


def test_a_device_profile_input_override_keeps_the_index_range() -> None:
    from core.spec import shape_on

    overridden = shape_on((16,), SampleShape((64,), vocab=90))
    assert overridden == (16,) and overridden.vocab == 90
    assert shape_on(None, SampleShape((64,), vocab=90)).vocab == 90 and shape_on(None, (3, 4)).vocab == 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-int8"])
def test_onnx_runtime_takes_a_model_of_token_ids(runtime: str) -> None:
    from envs.runtimes import RUNTIMES

    torch.manual_seed(0)
    model = CharLSTM(vocab=20, embedding=8, hidden=16).eval()
    shape = SampleShape((12,), vocab=20)
    x = torch.randint(0, 20, (16, 12))
    runnable = RUNTIMES[runtime].convert(model, shape, threads=1, calibration=x)
    with torch.no_grad():
        assert (runnable(x) - model(x)).abs().max() < (1e-4 if runtime == "onnxruntime" else 0.5)


def test_the_rl_searcher_refuses_a_lower_is_better_metric() -> None:
    from core.metric import ACCURACY, MetricSpec
    from search.searchers.rl.rewards import check_metric

    check_metric(ACCURACY)
    with pytest.raises(UsageError, match="scored by bpc, lower is better: use --searcher tpe"):
        check_metric(MetricSpec("bpc", False))
