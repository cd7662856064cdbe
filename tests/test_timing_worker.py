"""The timing worker: a separate long-lived process that converts, warms up and times models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from envs.profile import DeviceProfile
from envs.runtimes import RuntimeConversionError
from envs.tasks.user import build_user_model, parse_factory
from envs.timing import ALLOCATOR_ENV, MIN_ROUNDS, allocator_text
from envs.timing_worker import SETTINGS_TEXT, TimingWorker, TimingWorkerError

ROOT = Path(__file__).resolve().parents[1]
FAST = DeviceProfile(name="test-worker", threads=1, batch=4, warmup=1, repeats=3)
SHAPE = (1, 28, 28)


def _fixture(factory: str) -> nn.Module:
    """A model of tests/fixtures/worker_models.py, imported as a user model file (the worker gets it by value)."""
    return build_user_model(parse_factory(f"{ROOT / 'tests' / 'fixtures' / 'worker_models.py'}:{factory}")).eval()


@pytest.fixture(scope="module")
def worker() -> TimingWorker:
    timing = TimingWorker(torch.randn(16, *SHAPE))
    yield timing
    timing.close()


def test_a_model_is_timed_in_one_long_lived_process(worker: TimingWorker) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    first = worker.measure(model, SHAPE, FAST)
    pid = worker._process.pid
    second = worker.measure(model, SHAPE, FAST)
    assert first.ms > 0 and first.rounds >= MIN_ROUNDS and first.spread_ms >= 0
    assert second.ms > 0 and worker._process.pid == pid != 0
    int8 = worker.measure(model, SHAPE, DeviceProfile(name="test-worker-int8", runtime="torch-int8", threads=1,
                                                      batch=4, warmup=1, repeats=3))
    assert int8.ms > 0  # converted inside the worker with the calibration inputs sent once


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the worker's environment from /proc")
def test_the_worker_runs_with_the_stated_allocator_settings(worker: TimingWorker) -> None:
    worker.measure(nn.Linear(784, 10).eval(), (784,), FAST)
    raw = Path(f"/proc/{worker._process.pid}/environ").read_bytes().split(b"\0")
    environ = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    assert {name: environ.get(name) for name in ALLOCATOR_ENV} == ALLOCATOR_ENV
    assert allocator_text() in SETTINGS_TEXT


def test_a_user_file_model_travels_by_value(worker: TimingWorker) -> None:
    model = build_user_model(parse_factory(f"{ROOT / 'tests' / 'fixtures' / 'user_mlp.py'}:build"))
    assert type(model).__module__.startswith("_autocompress_user_")
    assert worker.measure(model.eval(), SHAPE, FAST).ms > 0


def test_a_model_the_runtime_cannot_take_is_one_conversion_error(worker: TimingWorker) -> None:
    int8 = DeviceProfile(name="test-worker-int8", runtime="torch-int8", threads=1, batch=4, warmup=1, repeats=3)
    with pytest.raises(RuntimeConversionError, match="torch-int8"):
        worker.measure(_fixture("branchy"), SHAPE, int8)
    assert worker.measure(_fixture("branchy"), SHAPE, FAST).ms > 0  # the worker lives on


def test_a_worker_that_dies_fails_that_measurement_and_is_restarted(worker: TimingWorker) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    worker.measure(model, SHAPE, FAST)
    with pytest.raises(TimingWorkerError, match="died"):
        worker.measure(_fixture("exits"), SHAPE, FAST)
    assert worker.measure(model, SHAPE, FAST).ms > 0  # a new worker process


def test_a_script_without_a_main_guard_can_use_it(tmp_path: Path) -> None:
    """The worker is its own program: the caller's main module is never imported again (unlike spawn)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "from envs.profile import DeviceProfile\nfrom envs.timing_worker import TimingWorker\n"
        "worker = TimingWorker(torch.randn(4, 8))\n"
        "latency = worker.measure(nn.Linear(8, 2), (8,), DeviceProfile(name='t', threads=1, batch=2, warmup=1,"
        " repeats=3))\n"
        "print('MEASURED', latency.rounds)\nworker.close()\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("MEASURED") == 1


def test_paired_timing_converts_the_reference_once_per_runtime_and_needs_one() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    reference = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    timing = TimingWorker(torch.randn(16, *SHAPE), reference)
    try:
        first = timing.measure_paired(model, SHAPE, FAST, min_reference_rounds=2)
        assert len(first.alone) == 2 and len(first.reference) == len(first.rounds) + 1 >= MIN_ROUNDS + 1
        int8 = timing.measure_paired(model, SHAPE, DeviceProfile(name="test-worker-int8", runtime="torch-int8",
                                                                 threads=1, batch=4, warmup=1, repeats=3))
        assert int8.alone == () and all(ratio > 0 for ratio in int8.ratios)
    finally:
        timing.close()
    with pytest.raises(ValueError, match="reference"):
        TimingWorker(torch.randn(16, *SHAPE)).measure_paired(model, SHAPE, FAST)
