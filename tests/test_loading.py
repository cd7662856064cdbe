"""load_model runs no code a packed file names, and checks the file against the architecture before any weight."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.errors import UsageError
from core.policy import LayerChoice, Policy
from envs.tasks import build_architecture
from methods import packing
from methods.packing import MAGIC, PackFormatError, read_header, unpack, write_packed
from methods.pipeline import CompressedModel, compress
from search import load_model

# The factory a file names: importing or calling it leaves a marker, so a test can see whether it ran.
FACTORY = """
import pathlib
import torch
from torch import nn

pathlib.Path({marker!r}).write_text("imported")


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 7 * 7, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 7).flatten(1))


def build():
    pathlib.Path({marker!r}).write_text("called")
    return Net()
"""


class Net(nn.Module):
    """The same architecture as the factory file's, defined here so that building it runs nothing of the file."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 7).flatten(1))


POLICY = Policy.from_choices({
    "stem": LayerChoice(sparsity=0.3, bits=4, keep=0.5),
    "fc": LayerChoice(sparsity=0.8, bits=3, rank=0.5),
})
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def user_file(tmp_path: Path) -> tuple[Path, Path, CompressedModel]:
    """A packed file whose header names ``factory.py:build``; returns (file, marker, compressed)."""
    marker = tmp_path / "factory-ran"
    source = tmp_path / "factory.py"
    source.write_text(FACTORY.format(marker=str(marker)))
    torch.manual_seed(0)
    compressed = compress(Net().eval(), POLICY, input_shape=(1, 28, 28), source={"model": f"{source}:build"})
    path = tmp_path / "user.acz"
    write_packed(path, compressed.blob)
    assert not marker.exists() and compressed.meta["history"] and compressed.meta["factorised"]
    return path, marker, compressed


def _same_outputs(model: nn.Module, compressed: CompressedModel) -> bool:
    with torch.inference_mode():
        return torch.equal(model(X), compressed.model(X))


def _edited(blob: bytes, edit: Any) -> bytes:
    """``blob`` with its header rewritten by ``edit(header)``: recompressed, length and payload CRC recomputed."""
    header = read_header(blob)
    payload = blob[header.payload_start :]
    text = {"version": packing.FORMAT_VERSION, "crc32": 0, "meta": header.meta, "tensors": header.tensors}
    edit(text)
    text["crc32"] = zlib.crc32(payload)
    raw = zlib.compress(json.dumps(text).encode())
    return MAGIC + struct.pack("<I", len(raw)) + raw + payload


@pytest.mark.parametrize("given", ["model", "factory"])
def test_a_user_model_file_loads_into_the_given_architecture(user_file, given: str) -> None:
    path, marker, compressed = user_file
    base = Net()
    options = {"model": base} if given == "model" else {"factory": Net}
    before = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = load_model(path, **options)
    assert _same_outputs(loaded, compressed)
    assert loaded.stem.out_channels == 4 and isinstance(loaded.fc, nn.Sequential)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # model= is copied, not changed
    assert not marker.exists()


def test_trust_source_runs_the_factory_the_file_names(user_file) -> None:
    path, marker, compressed = user_file
    assert _same_outputs(load_model(path, trust_source=True), compressed)
    assert marker.read_text() == "called"


def test_without_an_architecture_the_named_factory_is_not_run(user_file) -> None:
    path, marker, _ = user_file
    with pytest.raises(UsageError) as error:
        load_model(path)
    message = str(error.value)
    assert "factory.py:build" in message and "runs no code a file names" in message
    assert "model=" in message and "factory=" in message and "trust_source=True" in message
    assert not marker.exists()


def test_a_header_edited_to_name_another_factory_does_not_run_it(tmp_path: Path, user_file) -> None:
    path, marker, compressed = user_file
    evil_marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(evil_marker)!r}).write_text('ran')\n"
                    f"def build():\n    pathlib.Path({str(evil_marker)!r}).write_text('ran')\n")
    for source in ({"model": f"{evil}:build"}, {"model": "os:getcwd"}, {"task": "lenet5", "model": f"{evil}:build"}):
        edited = tmp_path / "edited.acz"
        edited.write_bytes(_edited(compressed.blob, lambda h, s=source: h["meta"].update(source=s)))
        with pytest.raises(UsageError, match="runs no code a file names"):
            load_model(edited)
        assert _same_outputs(load_model(edited, model=Net()), compressed)  # the caller's architecture, not the file's
    assert not evil_marker.exists() and not marker.exists()


def test_a_header_edited_to_name_a_builtin_task_is_refused_before_weights_load(tmp_path: Path, user_file,
                                                                               monkeypatch) -> None:
    _, _, compressed = user_file
    edited = tmp_path / "edited.acz"
    edited.write_bytes(_edited(compressed.blob, lambda h: h["meta"].update(source={"task": "lenet5"})))
    monkeypatch.setattr("search.loading.unpack", _no_decoding)
    with pytest.raises(UsageError, match="does not fit the architecture: pruning history entry 0 .*'stem'"):
        load_model(edited)


def _no_decoding(blob: bytes) -> Any:
    raise AssertionError("weights were decoded before the header was checked")


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        (lambda: Net(classes=12), "tensor 'fc.1.weight' is \\[10, 5\\] in the file but \\[12, 5\\] in the model"),
        (lambda: nn.Sequential(nn.Conv2d(1, 8, 3)), "pruning history entry 0 .*'stem'.* names no layer"),
    ],
)
def test_a_wrong_architecture_is_refused_before_weights_load(user_file, monkeypatch, wrong, named: str) -> None:
    path, _, _ = user_file
    monkeypatch.setattr("search.loading.unpack", _no_decoding)
    with pytest.raises(UsageError, match=named):
        load_model(path, model=wrong())


def test_a_missing_tensor_is_named(tmp_path: Path, user_file) -> None:
    _, _, compressed = user_file
    blob = compress(Net().eval(), Policy(), input_shape=(1, 28, 28), source={"model": "x.py:build"}).blob
    model = Net()
    model.extra = nn.Linear(2, 2)
    path = tmp_path / "dense.acz"
    write_packed(path, blob)
    with pytest.raises(UsageError, match="the model's tensor 'extra.weight' is not in the file"):
        load_model(path, model=model)


@pytest.mark.parametrize("task", ["lenet300", "lenet5"])
def test_builtin_task_files_load_as_before(tmp_path: Path, task: str) -> None:
    base = build_architecture({"task": task}).eval()
    layers = [name for name, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    policy = Policy.from_choices({name: LayerChoice(sparsity=0.5, bits=4, keep=0.5) for name in layers[:-1]})
    compressed = compress(base, policy, input_shape=(1, 28, 28), source={"task": task})
    path = tmp_path / f"{task}.acz"
    write_packed(path, compressed.blob)
    with torch.inference_mode():
        assert torch.equal(load_model(path)(X), compressed.model(X))


def test_at_most_one_way_to_get_the_architecture(user_file) -> None:
    path, _, _ = user_file
    with pytest.raises(UsageError, match="at most one of"):
        load_model(path, model=Net(), trust_source=True)
    with pytest.raises(UsageError, match="not a torch.nn.Module"):
        load_model(path, factory=lambda: "not a model")


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        (lambda h: h["meta"].update(input_shape=[1, 100_000, 100_000]), "input shape"),
        (lambda h: h["meta"].update(history=[["fc", True, [0, 10**9]]]), "removes channels 'fc' does not have"),
        (lambda h: h["meta"].update(history=[["stem.__class__", True, [0]]]), "names no layer"),
        (lambda h: h["meta"].update(history={"stem": 1}), "not a list"),
        (lambda h: h["meta"].update(factorised={"fc": 10**9}), "low-rank layer 'fc'"),
        (lambda h: h["meta"].update(factorised={"bn": 1}), "low-rank layer 'bn'"),
        (lambda h: h["tensors"][-1].update(shape=[10_000, 10_000]), "'fc.1.bias' is \\[10000, 10000\\] in the file"),
        (lambda h: h["tensors"][-1].update(shape=[2**20, 2**20]), "more than the 4294967296"),
    ],
)
def test_a_crafted_header_is_refused_clearly(tmp_path: Path, user_file, monkeypatch, edit, refused: str) -> None:
    _, _, compressed = user_file
    path = tmp_path / "crafted.acz"
    path.write_bytes(_edited(compressed.blob, edit))
    monkeypatch.setattr("search.loading.unpack", _no_decoding)
    with pytest.raises(UsageError, match=refused):
        load_model(path, model=Net())


def test_a_header_that_inflates_beyond_the_limit_is_refused(monkeypatch) -> None:
    blob = compress(Net().eval(), Policy(), input_shape=(1, 28, 28), source={"model": "x.py:build"}).blob
    (length,) = struct.unpack("<I", blob[4:8])
    monkeypatch.setattr(packing, "MAX_HEADER_BYTES", len(zlib.decompress(blob[8 : 8 + length])) + 1000)
    assert read_header(blob).meta["source"] == {"model": "x.py:build"}
    bomb = _edited(blob, lambda h: h["meta"].update(padding=" " * 100_000))
    assert len(bomb) < len(blob) + 1000
    with pytest.raises(PackFormatError, match="inflates to more than"):
        unpack(bomb)


def test_deeply_nested_or_oddly_typed_headers_are_corrupt_files() -> None:
    blob = compress(Net().eval(), Policy(), input_shape=(1, 28, 28), source={"model": "x.py:build"}).blob

    def raw_entry(header: dict[str, Any]) -> dict[str, Any]:
        return next(entry for entry in header["tensors"] if entry["encoding"] == "raw")

    for edit in (
        lambda h: raw_entry(h).update(dtype="_dynamo"),  # an attribute of torch, not a dtype name
        lambda h: h["tensors"][0].update(shape=[1] * 40),
        lambda h: h["tensors"].append(dict(h["tensors"][0])),
    ):
        with pytest.raises(PackFormatError, match="not a packed model"):
            unpack(_edited(blob, edit))
    raw = zlib.compress(("[" * 100_000 + "]" * 100_000).encode())
    with pytest.raises(PackFormatError, match="not a packed model"):
        read_header(MAGIC + struct.pack("<I", len(raw)) + raw)


def test_the_file_records_its_runtime_and_runnable_model_converts_for_it(tmp_path: Path) -> None:
    from envs.runtimes import RUNTIMES
    from search import runnable_model

    base = build_architecture({"task": "lenet300"}).eval()
    policy = Policy.from_choices({"fc1": LayerChoice(sparsity=0.5, bits=4, keep=0.5)}, runtime="torch-int8")
    int8 = compress(base, policy, input_shape=(1, 28, 28), source={"task": "lenet300"}, runtime="torch-int8")
    old = compress(base, policy, input_shape=(1, 28, 28), source={"task": "lenet300"})  # no runtime recorded
    assert read_header(int8.blob).runtime == "torch-int8" and read_header(old.blob).runtime is None
    paths = {name: tmp_path / f"{name}.acz" for name in ("int8", "old")}
    write_packed(paths["int8"], int8.blob)
    write_packed(paths["old"], old.blob)
    with torch.inference_mode():
        assert torch.equal(load_model(paths["int8"])(X), int8.model(X))  # load_model: the fp32 model, as before
    with pytest.raises(UsageError, match="give calibration="):
        runnable_model(paths["int8"])
    runnable = runnable_model(paths["int8"], calibration=X)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in runnable.modules())
    expected = RUNTIMES["torch-int8"].convert(int8.model, (1, 28, 28), 1, X)
    with torch.inference_mode():
        assert torch.equal(runnable(X), expected(X))
    with pytest.raises(UsageError, match="records no runtime"):
        runnable_model(paths["old"])
    eager = runnable_model(paths["old"], runtime="torch")
    with torch.inference_mode():
        assert torch.equal(eager(X), old.model(X))
    unknown = tmp_path / "unknown.acz"
    unknown.write_bytes(_edited(int8.blob, lambda h: h["meta"].update(runtime="tvm")))
    with pytest.raises(UsageError, match="runtime 'tvm' is not registered here"):
        runnable_model(unknown, calibration=X)
    unknown.write_bytes(_edited(int8.blob, lambda h: h["meta"].update(runtime="../../evil module")))
    with pytest.raises(UsageError, match="not a packed model"):
        runnable_model(unknown, calibration=X)
