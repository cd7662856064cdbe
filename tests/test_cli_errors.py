"""Every bad input: one line on stderr, exit code 2, nothing written, no earlier run touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from search.cli import main

ROOT = Path(__file__).resolve().parents[1]

MLP = """
from torch import nn
def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
"""

BAD_DATA = """
import torch
from torch.utils.data import TensorDataset
def make():
    ds = TensorDataset(torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,)))
    return ds, ds, ds
"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ")
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--budget-mb", "-5"], "positive"),
        (["--budget-mb", "five"], "cannot parse"),
        (["--budget-mb", "5XB"], "unit"),
        (["--target-latency=-20ms"], "positive"),
        (["--target-latency", "-20ms"], "expected one argument"),
        (["--target-latency", "soon"], "cannot parse"),
        (["--task", "alexnet"], "unknown task"),
        (["--searcher", "genetic"], "unknown searcher"),
        (["--device", "tpu"], "unknown device"),
        (["--trials", "0"], "trials"),
        (["--trials", "many"], "invalid int"),
        (["--model", "nowhere.py:build"], "nowhere.py"),
        (["--model", "no_such_package.mod:build"], "no_such_package"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--resume", "no/such/run"], "not a run folder"),
        (["--weights", "w.pt"], "--model"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    err = _run([*argv, "--out", str(out)] if "--resume" not in argv else argv, capsys)
    assert needle in err
    assert not out.exists()


def test_weights_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], write_file) -> None:
    model = write_file("mlp.py", MLP)
    out = tmp_path / "run"
    factory = f"{model}:build"
    assert "does not exist" in _run(["--model", factory, "--weights", str(tmp_path / "nope.pt"), "--out", str(out)],
                                     capsys)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    _run(["--model", factory, "--weights", str(corrupt), "--out", str(out)], capsys)
    not_state = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], not_state)
    _run(["--model", factory, "--weights", str(not_state), "--out", str(out)], capsys)
    whole_module = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), whole_module)
    _run(["--model", factory, "--weights", str(whole_module), "--out", str(out)], capsys)
    wrong_shape = tmp_path / "wrong.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 8)).state_dict(), wrong_shape)
    _run(["--model", factory, "--weights", str(wrong_shape), "--out", str(out)], capsys)
    assert not out.exists()


def test_missing_factory_attribute_and_unfit_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_file
) -> None:
    model = write_file("mlp.py", MLP)
    data = write_file("bad_data.py", BAD_DATA)
    out = tmp_path / "run"
    assert "nope" in _run(["--model", f"{model}:nope", "--out", str(out)], capsys)
    _run(["--model", f"{model}:build", "--data", f"{data}:make", "--out", str(out)], capsys)
    assert not out.exists()


def test_budget_below_reachable_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    err = _run(["--task", "lenet5", "--budget-mb", "100B", "--quiet", "--out", str(out)], capsys)
    assert "smallest" in err
    assert not out.exists()


def test_an_earlier_run_is_never_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "pareto.csv").write_text("precious")
    _run(["--task", "lenet5", "--quiet", "--out", str(earlier)], capsys)
    assert [p.name for p in earlier.iterdir()] == ["pareto.csv"]
    assert (earlier / "pareto.csv").read_text() == "precious"


def test_entry_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search.py"), "--budget-mb", "-1", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
