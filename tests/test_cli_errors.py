"""Every bad input: one line on stderr, exit code 2, nothing written, no earlier run touched."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
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


def test_unreachable_latency_target_is_refused_with_what_would_reach_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    err = _run(["--task", "lenet300", "--device", "cpu-b1", "--target-latency", "1us", "--quiet",
                "--out", str(out)], capsys)
    assert "latency target 0.001 ms is below the fastest model the search space allows" in err
    assert "ms for the full model" in err and "raise --target-latency to at least" in err
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


def _cli(args: list[str], cwd: Path, cache: Path, wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """The real entry script with a private model cache (which stays empty unless a task is trained)."""
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([*wrapper, sys.executable, str(ROOT / "search.py"), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return proc.stderr


def _read_only_wrapper(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is read-only (a private read-only bind mount; root ignores modes)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only mount")
    quoted = shlex.quote(str(folder))
    script = f'mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted} && exec "$@"'
    wrapper = ["unshare", "-rm", "sh", "-c", script, "sh"]
    probe = subprocess.run([*wrapper, "touch", str(folder / "probe")], capture_output=True, text=True)
    if probe.returncode == 0 or (folder / "probe").exists():
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()}")
    return wrapper


def test_an_unusable_out_folder_fails_before_any_training(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "file").write_text("not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    cases = [
        (["--out", "/proc/x/run"], (), "cannot create the output folder /proc/x/run"),
        (["--out", str(tmp_path / "file" / "run")], (), "is not a folder"),
        (["--out", str(read_only / "run")], _read_only_wrapper(read_only), "Read-only file system"),
    ]
    for args, wrapper, needle in cases:
        err = _one_line_error(_cli(["--task", "lenet5", "--trials", "1", *args], tmp_path, cache, wrapper))
        assert needle in err
    assert not cache.exists(), "the task was loaded (or trained) before the folder was checked"
    assert list(read_only.iterdir()) == [] and (tmp_path / "file").read_text() == "not a folder"
    assert not Path("/proc/x").exists()


def test_a_read_only_run_folder_cannot_be_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: lenet5\nsearcher: random\ntrials: 2\n")
    cache = tmp_path / "cache"
    err = _one_line_error(_cli(["--resume", str(run), "--quiet"], tmp_path, cache, _read_only_wrapper(run)))
    assert f"cannot write to the run folder {run}" in err
    assert [p.name for p in run.iterdir()] == ["config.yaml"] and not cache.exists()
